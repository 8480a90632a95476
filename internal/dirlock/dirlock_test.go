//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package dirlock

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/etcdstore/etcdstore/internal/childtest"
)

// holderEnv names the lock file that the test binary, run as
// TestHolder's child, locks until its standard input closes.
const holderEnv = "DIRLOCK_TEST_HOLD"

// TestHolder is the other process of TestTryLockOtherProcess: it does
// nothing unless holderEnv is set.
func TestHolder(t *testing.T) {
	path := os.Getenv(holderEnv)
	if path == "" {
		t.Skip("the other process of TestTryLockOtherProcess")
	}
	l, err := TryLock(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	os.Stdout.WriteString("locked\n")
	io.Copy(io.Discard, os.Stdin)
}

// TestTryLockOtherProcess: a lock another process holds makes TryLock
// fail at once, and is free again once that process lets go.
func TestTryLockOtherProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	child := childtest.Start(t, "TestHolder", holderEnv+"="+path, "locked", 30*time.Second)
	start := time.Now()
	if l, err := TryLock(path); !errors.Is(err, ErrLocked) {
		if l != nil {
			l.Unlock()
		}
		t.Fatalf("TryLock while another process holds the lock = %v, want ErrLocked", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("the refused TryLock took %v", took)
	}
	if err := child.Stop(); err != nil {
		t.Fatalf("the other process: %v", err)
	}
	l, err := TryLock(path)
	if err != nil {
		t.Fatalf("TryLock after the other process ended: %v", err)
	}
	l.Unlock()
}

// TestTryLock: a second TryLock of a held file fails at once, within one
// process too (flock belongs to the open file, not the process), and
// succeeds once the first is unlocked.
func TestTryLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	first, err := TryLock(path)
	if err != nil {
		t.Fatal(err)
	}
	if second, err := TryLock(path); !errors.Is(err, ErrLocked) {
		if second != nil {
			second.Unlock()
		}
		t.Fatalf("second TryLock while held = %v, want ErrLocked", err)
	}
	if err := first.Unlock(); err != nil {
		t.Fatal(err)
	}
	again, err := TryLock(path)
	if err != nil {
		t.Fatalf("TryLock after Unlock: %v", err)
	}
	again.Unlock()
}

// TestTryLockMissingDirectory: a lock file that cannot be created is an
// error, not ErrLocked.
func TestTryLockMissingDirectory(t *testing.T) {
	_, err := TryLock(filepath.Join(t.TempDir(), "missing", "lock"))
	if err == nil || errors.Is(err, ErrLocked) {
		t.Fatalf("TryLock in a missing directory = %v, want an error other than ErrLocked", err)
	}
}
