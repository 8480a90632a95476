package embedetcd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"

	"github.com/etcdstore/etcdstore/internal/childtest"
	"github.com/etcdstore/etcdstore/internal/dirlock"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestLocalCompacts: the member Local configures runs with periodic
// auto-compaction and the quota, as etcd reads them.
func TestLocalCompacts(t *testing.T) {
	cfg := Local("default", t.TempDir())
	e, err := Start(cfg, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	sc := e.Server.Cfg
	if cfg.AutoCompactionMode != embed.CompactorModePeriodic || sc.AutoCompactionRetention != CompactionRetention {
		t.Errorf("auto-compaction %q %v, want %q %v", cfg.AutoCompactionMode, sc.AutoCompactionRetention, embed.CompactorModePeriodic, CompactionRetention)
	}
	if sc.QuotaBackendBytes != QuotaBytes {
		t.Errorf("quota %d bytes, want %d", sc.QuotaBackendBytes, QuotaBytes)
	}
}

// memberEnv names the data directory in which the test binary, run as
// TestMember's child, runs a member until its standard input closes.
const memberEnv = "EMBEDETCD_TEST_MEMBER_DIR"

// TestMember is the other process of TestDirInUseByAnotherProcess: it
// does nothing unless memberEnv is set.
func TestMember(t *testing.T) {
	dir := os.Getenv(memberEnv)
	if dir == "" {
		t.Skip("the other process of TestDirInUseByAnotherProcess")
	}
	e, err := Start(Local("default", dir), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	os.Stdout.WriteString("ready\n")
	io.Copy(io.Discard, os.Stdin)
}

// startAtOnce starts a member in dir and fails the test unless Start
// returns within a few seconds: a member that waits for a lock would
// wait for minutes.
func startAtOnce(t *testing.T, dir string) (*embed.Etcd, error) {
	t.Helper()
	type result struct {
		e   *embed.Etcd
		err error
	}
	done := make(chan result, 1)
	go func() {
		e, err := Start(Local("default", dir), 30*time.Second)
		done <- result{e, err}
	}()
	select {
	case r := <-done:
		return r.e, r.err
	case <-time.After(10 * time.Second):
		t.Fatalf("Start in %s has not returned after 10 s", dir)
		return nil, nil
	}
}

// wantInUse fails the test unless err says that dir is in use by, and
// names its lock file.
func wantInUse(t *testing.T, e *embed.Etcd, err error, dir, by string) {
	t.Helper()
	if e != nil {
		e.Close()
	}
	want := fmt.Sprintf("embedded etcd: data directory %s is in use by %s (lock %s)", dir, by, filepath.Join(dir, LockFile))
	if !errors.Is(err, ErrDirInUse) || err.Error() != want {
		t.Fatalf("Start on a directory in use = %v, want %q wrapping ErrDirInUse", err, want)
	}
}

// TestDirInUseByAnotherProcess: while another process runs a member in a
// directory, Start there fails at once, saying so; once that process has
// stopped, Start there works, on the data it left.
func TestDirInUseByAnotherProcess(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	child := childtest.Start(t, "TestMember", memberEnv+"="+dir, "ready", 60*time.Second)

	start := time.Now()
	e, err := startAtOnce(t, dir)
	wantInUse(t, e, err, dir, "another process")
	if took := time.Since(start); took > time.Second {
		t.Errorf("the refused Start took %v", took)
	}

	if err := child.Stop(); err != nil {
		t.Fatalf("the other process: %v", err)
	}
	e, err = startAtOnce(t, dir)
	if err != nil {
		t.Fatalf("Start after the other process stopped: %v", err)
	}
	e.Close()
}

// TestDirInUseInProcess: a second member on a directory that a member of
// this process holds fails at once; a member started the moment the
// first has closed, on its directory, works, every time.
func TestDirInUseInProcess(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for i := range 3 {
		e, err := startAtOnce(t, dir)
		if err != nil {
			t.Fatalf("start %d: %v", i+1, err)
		}
		second, err := startAtOnce(t, dir)
		wantInUse(t, second, err, dir, "another etcd member of this process")
		e.Close()
	}
	// The lock itself is flock(2)'s, which conflicts between two opens of
	// the file in one process as between two processes: a holder that
	// Start does not know of is "another process".
	// The last member's lock goes once its stop is noticed, just after
	// Close returns; wait for that, for at most 10 s.
	var l *dirlock.Lock
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if l, err = dirlock.TryLock(filepath.Join(dir, LockFile)); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	e, err := startAtOnce(t, dir)
	wantInUse(t, e, err, dir, "another process")
	l.Unlock()
}
