package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alexedwards/scs/v2"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
	"github.com/etcdstore/etcdstore/internal/exampleapp"
	"github.com/etcdstore/etcdstore/internal/webtest"
)

// SCS's scs.New starts a MemStore cleanup loop that runs until the end
// (scs v2.9.0 memstore.go), as the store's own TestMain says.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/alexedwards/scs/v2/memstore.(*MemStore).startCleanup"))
}

// seeded is how many sessions each command's test starts with.
const seeded = 2000

// cluster is an etcd member, a prefix of the test's own, and the flags
// that reach it.
type cluster struct {
	c      *clientv3.Client
	prefix string
	flags  []string
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	srv := etcdtest.Start(t, etcdtest.Own())
	prefix := strings.ReplaceAll(t.Name(), "/", "-") + ":"
	return &cluster{c: srv.Client(t), prefix: prefix, flags: []string{"-etcd", strings.Join(srv.Endpoints(), ","), "-prefix", prefix}}
}

// etcdstoreCmd runs the command in-process with args and the cluster's
// flags after them, and returns its exit code, stdout and stderr.
func (cl *cluster) etcdstoreCmd(ctx context.Context, afterPage func(int), args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(ctx, append(args, cl.flags...), &out, &errOut, afterPage)
	return code, out.String(), errOut.String()
}

// store returns an app server's store on the cluster.
func (cl *cluster) store(keys ...[]byte) *etcdstore.EtcdStore {
	opts := []etcdstore.Option{etcdstore.WithPrincipal(exampleapp.PrincipalKey)}
	if keys != nil {
		opts = append(opts, etcdstore.WithEncryption(keys...))
	}
	return etcdstore.NewWithPrefix(cl.c, cl.prefix, opts...)
}

// seed commits n sessions through s, principals user-0 to user-9 on
// every other one, and returns their tokens.
func seed(t *testing.T, s *etcdstore.EtcdStore, n int) []string {
	t.Helper()
	ctx := etcdtest.Context(t, time.Minute)
	tokens := make([]string, n)
	var wg sync.WaitGroup
	var failed atomic.Value
	for w := range 16 {
		wg.Go(func() {
			for i := w; i < n; i += 16 {
				tokens[i] = fmt.Sprintf("seed-%05d", i)
				values := map[string]any{"message": fmt.Sprint("m", i)}
				if i%2 == 0 {
					values[exampleapp.PrincipalKey] = fmt.Sprint("user-", i%10)
				}
				b, err := scs.GobCodec{}.Encode(time.Now().Add(time.Hour), values)
				if err == nil {
					err = s.CommitCtx(ctx, tokens[i], b, time.Now().Add(time.Hour))
				}
				if err != nil {
					failed.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
	return tokens
}

// browsers are visitors of the example app on two app servers, each
// logged in and then counting its requests on /count, until stop.
type browsers struct {
	servers []string
	sm      []*scs.SessionManager
	clients []*http.Client
	stop    chan struct{}
	wg      sync.WaitGroup
	counts  []atomic.Int64 // requests each made since its count began
	resets  []atomic.Int64 // how often its count started again at 1
	errs    atomic.Int64
}

func startBrowsers(t *testing.T, cl *cluster, n int, keys ...[]byte) *browsers {
	t.Helper()
	b := &browsers{stop: make(chan struct{}), clients: make([]*http.Client, n), counts: make([]atomic.Int64, n), resets: make([]atomic.Int64, n)}
	for range 2 {
		sm := exampleapp.NewSessionManager(cl.store(keys...), 0, time.Hour)
		srv := httptest.NewServer(exampleapp.New(sm))
		t.Cleanup(srv.Close)
		b.servers, b.sm = append(b.servers, srv.URL), append(b.sm, sm)
	}
	for i := range n {
		br := webtest.New(t)
		br.MustGet(b.servers[0], fmt.Sprintf("/login?name=browser-%d", i))
		b.clients[i] = br.Client
		// The first count is made before the loop: a session ended before
		// its browser's first count would look like one never ended.
		if !b.count(i, 1) {
			t.Fatalf("first count of browser %d failed", i)
		}
		b.wg.Go(func() {
			for j := 0; ; j++ {
				select {
				case <-b.stop:
					return
				default:
				}
				if !b.count(i, j) {
					return
				}
			}
		})
	}
	return b
}

// count makes browser i's request on server j%2 and checks the count it
// answers: one more than before, or 1 when its session ended (a reset).
// It reports false, counted in errs, on an error or a lost commit.
func (b *browsers) count(i, j int) bool {
	resp, err := b.clients[i].Get(b.servers[j%2] + "/count")
	if err != nil {
		b.errs.Add(1)
		return false
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var got int64
	if _, err := fmt.Sscanf(string(body), "count: %d", &got); err != nil || resp.StatusCode != http.StatusOK {
		b.errs.Add(1)
		return false
	}
	if got == 1 && b.counts[i].Load() > 0 {
		b.resets[i].Add(1)
		b.counts[i].Store(0)
	}
	if want := b.counts[i].Add(1); got != want {
		// A count that went back: a lost commit.
		b.errs.Add(1)
		return false
	}
	return true
}

// halt stops the browsers, and then has each make one more count, so that
// a session ended after a browser's last request in the loop is seen too.
func (b *browsers) halt(t *testing.T) {
	t.Helper()
	close(b.stop)
	b.wg.Wait()
	for i := range b.clients {
		b.count(i, i)
	}
	if n := b.errs.Load(); n > 0 {
		t.Errorf("%d browsers saw an error or a lost commit", n)
	}
}

// countLive counts the live sessions as the command does, with -json.
func countLive(t *testing.T, cl *cluster, args ...string) int {
	t.Helper()
	code, out, errOut := cl.etcdstoreCmd(etcdtest.Context(t, time.Minute), nil, append([]string{"count", "-json"}, args...)...)
	if code != 0 {
		t.Fatalf("count: exit %d: %s", code, errOut)
	}
	var v struct{ Sessions int }
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("count -json: %q: %v", out, err)
	}
	return v.Sessions
}

// cancelAfter returns a context and a hook for run that cancels it once
// n sessions are done.
func cancelAfter(t *testing.T, n int) (context.Context, func(int)) {
	ctx, cancel := context.WithCancel(etcdtest.Context(t, time.Minute))
	t.Cleanup(cancel)
	return ctx, func(done int) {
		if done >= n {
			cancel()
		}
	}
}

// TestLogoutAll: logout -all, interrupted and run again, while browsers
// use the example app: every seeded session and every browser's first
// session ends revoked, the browsers lose nothing but their session, and
// no ended session comes back.
func TestLogoutAll(t *testing.T) {
	t.Parallel()
	cl := newCluster(t)
	tokens := seed(t, cl.store(), seeded)
	b := startBrowsers(t, cl, 4)
	if got := countLive(t, cl); got != seeded+4 {
		t.Fatalf("count: %d, want %d", got, seeded+4)
	}
	code, out, _ := cl.etcdstoreCmd(etcdtest.Context(t, time.Minute), nil, "logout", "-all", "-dry-run")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("would end %d live sessions", seeded+4)) {
		t.Fatalf("logout -all -dry-run: exit %d, %q", code, out)
	}
	ctx, hook := cancelAfter(t, 500)
	code, _, errOut := cl.etcdstoreCmd(ctx, hook, "logout", "-all")
	if code != exitInterrupted || !strings.Contains(errOut, "-from ") {
		t.Fatalf("interrupted logout -all: exit %d, %q; want %d and a -from", code, errOut, exitInterrupted)
	}
	code, out, errOut = cl.etcdstoreCmd(etcdtest.Context(t, time.Minute), nil, "logout", "-all")
	if code != 0 {
		t.Fatalf("logout -all: exit %d: %s", code, errOut)
	}
	b.halt(t)
	s := cl.store()
	ctx = etcdtest.Context(t, time.Minute)
	for _, tok := range tokens {
		if e, ok, err := s.Ended(ctx, tok); err != nil || !ok || e.Reason != etcdstore.EndRevoked {
			t.Fatalf("seeded session after logout -all: %+v, %v, %v", e, ok, err)
		}
	}
	for i := range b.resets {
		if b.resets[i].Load() == 0 {
			t.Errorf("browser %d kept its session through logout -all", i)
		}
	}
	// Only sessions the browsers began after theirs ended are live.
	all, err := s.AllCtx(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := countLive(t, cl); got != len(all) || got > 4 {
		t.Errorf("after logout -all: count %d, AllCtx %d; want equal and at most 4", got, len(all))
	}
	if code, _, errOut := cl.etcdstoreCmd(ctx, nil, "check"); code != 0 {
		t.Errorf("check after logout -all: exit %d: %s", code, errOut)
	}
	t.Logf("logout -all: %s", strings.TrimSpace(out))
}

// TestReseal: reseal, interrupted and run again, while browsers count on
// app servers that seal under the new key: every session ends under the
// new key with its data, nothing a browser wrote is lost, and the command
// says no session needs the old key.
func TestReseal(t *testing.T) {
	t.Parallel()
	cl := newCluster(t)
	oldKey, newKey := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	tokens := seed(t, cl.store(oldKey), seeded)
	b := startBrowsers(t, cl, 4, newKey, oldKey)
	keys := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keys, []byte("# new first\n"+base64.StdEncoding.EncodeToString(newKey)+"\n"+fmt.Sprintf("%x", oldKey)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, _ := cl.etcdstoreCmd(etcdtest.Context(t, time.Minute), nil, "reseal", "-keys", keys, "-dry-run")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("would reseal %d live sessions", seeded)) {
		t.Fatalf("reseal -dry-run: exit %d, %q", code, out)
	}
	ctx, hook := cancelAfter(t, 500)
	if code, _, errOut := cl.etcdstoreCmd(ctx, hook, "reseal", "-keys", keys); code != exitInterrupted {
		t.Fatalf("interrupted reseal: exit %d: %s", code, errOut)
	}
	code, out, errOut := cl.etcdstoreCmd(etcdtest.Context(t, time.Minute), nil, "reseal", "-keys", keys)
	if code != 0 || !strings.Contains(out, "no live session needs a key other than") {
		t.Fatalf("reseal: exit %d, %q, %s", code, out, errOut)
	}
	b.halt(t)
	for i := range b.resets {
		if n := b.resets[i].Load(); n != 0 {
			t.Errorf("browser %d lost its session %d times", i, n)
		}
	}
	// A store with the new key alone reads every session as written.
	s := cl.store(newKey)
	ctx = etcdtest.Context(t, time.Minute)
	for i, tok := range tokens {
		data, ok, err := s.FindCtx(ctx, tok)
		if err != nil || !ok {
			t.Fatalf("session %d after reseal: %v, %v", i, ok, err)
		}
		if _, v, _ := (scs.GobCodec{}).Decode(data); v["message"] != fmt.Sprint("m", i) {
			t.Fatalf("session %d after reseal: %v", i, v)
		}
	}
	if got, err := s.FindByPrincipal(ctx, "user-4"); err != nil || len(got) != seeded/10 {
		t.Errorf("FindByPrincipal after reseal: %d, %v; want %d", len(got), err, seeded/10)
	}
	if got := countLive(t, cl); got != seeded+4 {
		t.Errorf("count after reseal: %d, want %d", got, seeded+4)
	}
	t.Logf("reseal: %s", strings.TrimSpace(out))
}

// TestCountLsCheckLogout: count, ls (table and JSON, by principal), check
// finding and fixing the index, logout -principal, on sessions that
// browsers use meanwhile.
func TestCountLsCheckLogout(t *testing.T) {
	t.Parallel()
	cl := newCluster(t)
	seed(t, cl.store(), seeded)
	b := startBrowsers(t, cl, 2)
	ctx := etcdtest.Context(t, time.Minute)
	if got := countLive(t, cl, "-principal", "user-2"); got != seeded/10 {
		t.Errorf("count -principal user-2: %d, want %d", got, seeded/10)
	}
	code, out, errOut := cl.etcdstoreCmd(ctx, nil, "ls", "-json")
	if lines := strings.Count(out, "\n"); code != 0 || lines != seeded+2 {
		t.Fatalf("ls -json: exit %d, %d lines, want %d: %s", code, lines, seeded+2, errOut)
	}
	// The data's key, which no token holds; a value such as "m1" may be
	// part of a browser's store token (base64 of a SHA-256).
	if strings.Contains(out, "message") {
		t.Error("ls shows session data without -show-data")
	}
	code, _, _ = cl.etcdstoreCmd(ctx, nil, "ls", "-principal", "user-4", "-show-data", "-hash-tokens=false")
	if code != exitUsage {
		t.Errorf("ls -show-data -hash-tokens=false: exit %d, want %d", code, exitUsage)
	}
	code, out, _ = cl.etcdstoreCmd(ctx, nil, "ls", "-principal", "user-4", "-hash-tokens=false")
	if code != 0 || strings.Count(out, "\n") != seeded/10+1 || strings.Contains(out, "seed-") || !strings.Contains(out, "sha256:") {
		t.Errorf("ls -principal -hash-tokens=false: exit %d, %q", code, out[:min(len(out), 300)])
	}
	code, out, _ = cl.etcdstoreCmd(ctx, nil, "ls", "-principal", "user-4", "-show-data")
	if code != 0 || !strings.Contains(out, "seed-00004") || !strings.Contains(out, "message:m4") {
		t.Errorf("ls -show-data: exit %d, %q", code, out[:min(len(out), 300)])
	}

	if code, out, errOut := cl.etcdstoreCmd(ctx, nil, "check"); code != 0 || !strings.Contains(out, "0 stale") || !strings.Contains(out, "0 missing") {
		t.Fatalf("check: exit %d, %q, %s", code, out, errOut)
	}
	// Break the index: one entry gone, one stray.
	s := cl.store()
	// The entry of a seeded session, which no browser writes again.
	sum := sha256.Sum256([]byte("user-2"))
	entry := etcdstore.PrincipalIndexPrefix(cl.prefix) + hex.EncodeToString(sum[:16]) + "/seed-00002"
	if resp, err := cl.c.Get(ctx, entry); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("entry of seed-00002: %v", err)
	}
	stray := entry[:strings.LastIndex(entry, "/")+1] + "no-such-session"
	if _, err := cl.c.Txn(ctx).Then(clientv3.OpDelete(entry), clientv3.OpPut(stray, "")).Commit(); err != nil {
		t.Fatal(err)
	}
	if code, out, _ := cl.etcdstoreCmd(ctx, nil, "check"); code != exitFound || !strings.Contains(out, "1 stale") || !strings.Contains(out, "1 missing") {
		t.Errorf("check of a broken index: exit %d, %q", code, out)
	}
	if code, out, errOut := cl.etcdstoreCmd(ctx, nil, "check", "-fix"); code != 0 || !strings.Contains(out, "fixed: 2") {
		t.Errorf("check -fix: exit %d, %q, %s", code, out, errOut)
	}
	if code, out, _ := cl.etcdstoreCmd(ctx, nil, "check", "-json"); code != 0 || !strings.Contains(out, `"Stale":0`) {
		t.Errorf("check after -fix: exit %d, %q", code, out)
	}

	code, out, _ = cl.etcdstoreCmd(ctx, nil, "logout", "-principal", "user-6", "-dry-run")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("would end %d", seeded/10)) {
		t.Errorf("logout -principal -dry-run: exit %d, %q", code, out)
	}
	code, out, _ = cl.etcdstoreCmd(ctx, nil, "logout", "-principal", "user-6")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("ended %d sessions", seeded/10)) {
		t.Errorf("logout -principal: exit %d, %q", code, out)
	}
	b.halt(t)
	if got := countLive(t, cl, "-principal", "user-6"); got != 0 {
		t.Errorf("after logout -principal: %d sessions left", got)
	}
	all, err := s.AllCtx(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := countLive(t, cl); got != len(all) || got != seeded-seeded/10+2 {
		t.Errorf("count: %d, AllCtx %d, want %d", got, len(all), seeded-seeded/10+2)
	}
}

// TestErrors: bad flags, an endpoint with no etcd, a wrong password, a
// bad key file and a bad prefix each exit with their code and say what to
// check.
func TestErrors(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t, etcdtest.Own())
	ep := strings.Join(srv.Endpoints(), ",")
	c := srv.Client(t)
	ctx := etcdtest.Context(t, time.Minute)
	for _, step := range []func() error{
		func() error { _, err := c.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := c.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := c.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	badKeys := filepath.Join(dir, "bad")
	os.WriteFile(badKeys, []byte("not a key\n"), 0o600)
	for _, tc := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"frobnicate"}, exitUsage, "unknown command"},
		{[]string{"count", "-nope"}, exitUsage, "-nope"},
		{[]string{"count", "-etcd", ""}, exitUsage, "ETCD_ENDPOINTS"},
		{[]string{"logout", "-etcd", ep}, exitUsage, "-principal P or -all"},
		{[]string{"reseal", "-etcd", ep}, exitUsage, "-keys"},
		{[]string{"count", "-etcd", "http://127.0.0.1:1", "-timeout", "1s"}, exitUnreachable, "check -etcd"},
		{[]string{"count", "-etcd", ep, "-user", "root", "-password", "wrong"}, exitAuth, "check -user"},
		{[]string{"count", "-etcd", ep, "-user", "root", "-password", "rootpw", "-keys", filepath.Join(dir, "none")}, exitKeys, "-keys"},
		{[]string{"count", "-etcd", ep, "-user", "root", "-password", "rootpw", "-keys", badKeys}, exitKeys, "line 1"},
		{[]string{"count", "-etcd", ep, "-prefix", etcdstore.PrincipalIndexRoot + "x"}, exitPrefix, "-prefix"},
	} {
		var out, errOut bytes.Buffer
		code := run(ctx, tc.args, &out, &errOut, nil)
		if code != tc.code || !strings.Contains(errOut.String(), tc.says) {
			t.Errorf("etcdstore %q: exit %d, %q; want %d and %q", tc.args, code, errOut.String(), tc.code, tc.says)
		}
	}
	var out bytes.Buffer
	if code := run(ctx, []string{"count", "-etcd", ep, "-user", "root", "-password", "rootpw", "-json"}, &out, io.Discard, nil); code != 0 || !strings.Contains(out.String(), `"sessions":0`) {
		t.Errorf("count as root: exit %d, %q", code, out.String())
	}
	out.Reset()
	if code := run(ctx, []string{"-h"}, &out, io.Discard, nil); code != 0 || !strings.Contains(out.String(), "Exit codes") {
		t.Errorf("-h: exit %d", code)
	}
}

// TestBinary builds the command and runs it as an operator would.
func TestBinary(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "etcdstore")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cl := newCluster(t)
	seed(t, cl.store(), 50)
	cmd := exec.Command(bin, append([]string{"count"}, cl.flags...)...)
	out, err := cmd.CombinedOutput()
	if err != nil || string(out) != "live sessions: 50\n" {
		t.Errorf("etcdstore count: %v, %q", err, out)
	}
	cmd = exec.Command(bin, "ls", "-prefix", cl.prefix)
	cmd.Env = append(os.Environ(), "ETCD_ENDPOINTS="+cl.flags[1])
	if out, err := cmd.Output(); err != nil || strings.Count(string(out), "\n") != 51 {
		t.Errorf("etcdstore ls with $ETCD_ENDPOINTS: %v, %d lines", err, strings.Count(string(out), "\n"))
	}
	if err := exec.Command(bin, "count", "-etcd", "http://127.0.0.1:1", "-timeout", "500ms").Run(); err == nil || err.(*exec.ExitError).ExitCode() != exitUnreachable {
		t.Errorf("etcdstore count on a closed port: %v, want exit %d", err, exitUnreachable)
	}
}
