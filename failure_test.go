package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// TestCorruptEnvelope: a value that bears the envelope's marker but does
// not decode is a system error for Find and All, not a silent miss, and
// other sessions are unaffected.
func TestCorruptEnvelope(t *testing.T) {
	t.Parallel()
	s, c := newStore(t)
	ctx := ctxFor(t)
	if err := s.Commit("good", []byte("x"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{envelopeMagic, envelopeMagic + "\x01short", envelopeMagic + "\x09" + strings.Repeat("\x00", 8)} {
		if _, err := c.Put(ctx, s.keys.prefix+"bad", bad); err != nil {
			t.Fatal(err)
		}
		if _, found, err := s.Find("bad"); err == nil || found || !strings.HasPrefix(err.Error(), "etcdstore: corrupt session value") {
			t.Errorf("Find(%q) = found %v, err %v; want an etcdstore: corrupt session value error", bad, found, err)
		}
		// The error names the session by its key's mod revision, not by
		// its key: the key holds the token, a password.
		if _, err := s.All(); err == nil || !strings.Contains(err.Error(), "mod revision") || strings.Contains(err.Error(), "bad") {
			t.Errorf("All with %q = %v, want an error naming the session by mod revision, without its token", bad, err)
		}
		if _, found, err := s.Find("good"); err != nil || !found {
			t.Errorf("good session with %q beside it: found %v, err %v", bad, found, err)
		}
	}
}

func TestValueTooLarge(t *testing.T) {
	t.Parallel()
	const limit = 64 << 10
	srv := etcdtest.Start(t, func(cfg *embed.Config) { cfg.MaxRequestBytes = limit })
	c := srv.Client(t)
	s := New(c)
	err := s.Commit("big", make([]byte, limit), time.Now().Add(time.Hour))
	if !errors.Is(err, ErrValueTooLarge) || !errors.Is(err, rpctypes.ErrRequestTooLarge) {
		t.Fatalf("Commit of %d bytes = %v, want ErrValueTooLarge wrapping ErrRequestTooLarge", limit, err)
	}
	if strings.Count(err.Error(), "etcdstore:") != 1 {
		t.Errorf("error %q repeats its prefix", err)
	}
	for _, want := range []string{"etcdstore: ", "--max-request-bytes", fmt.Sprint(limit + envelopeHeader + len(DefaultPrefix) + len("big"))} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if _, found, _ := s.Find("big"); found {
		t.Fatal("too-large session was written")
	}
	if err := s.Commit("small", []byte("x"), time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("Commit after a too-large one: %v", err)
	}
}

func TestCanceledContext(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	expiry := time.Now().Add(time.Hour)
	errs := map[string]error{
		"Commit": s.CommitCtx(ctx, "tok", []byte("x"), expiry),
		"Delete": s.DeleteCtx(ctx, "tok"),
	}
	_, _, errs["Find"] = s.FindCtx(ctx, "tok")
	_, errs["All"] = s.AllCtx(ctx)
	for op, err := range errs {
		if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "etcdstore: ") {
			t.Errorf("%s with a canceled context = %v, want an etcdstore: error wrapping context.Canceled", op, err)
		}
	}
	if _, found, _ := s.Find("tok"); found {
		t.Fatal("canceled Commit wrote the session")
	}
}

func TestClosedClient(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	c := srv.Client(t)
	s := New(c, WithPrincipal("user"))
	if err := s.Commit("tok", []byte("x"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	ctx := ctxFor(t)
	errs := map[string]error{
		"Commit": s.CommitCtx(ctx, "tok2", []byte("x"), time.Now().Add(time.Hour)),
		"Delete": s.DeleteCtx(ctx, "tok"),
	}
	_, _, errs["Find"] = s.FindCtx(ctx, "tok")
	_, errs["All"] = s.AllCtx(ctx)
	_, errs["FindByPrincipal"] = s.FindByPrincipal(ctx, "ann")
	_, errs["DeleteByPrincipal"] = s.DeleteByPrincipal(ctx, "ann")
	for op, err := range errs {
		if err == nil || !strings.HasPrefix(err.Error(), "etcdstore: ") || !errors.Is(err, ErrClientClosed) || !errors.Is(err, context.Canceled) {
			t.Errorf("%s on a closed client = %v, want an etcdstore: error wrapping ErrClientClosed and context.Canceled", op, err)
		}
	}
}

// TestEtcdDown: with etcd stopped, every method called with a context
// that has no deadline returns, about the store's timeout later, an error
// wrapping context.DeadlineExceeded, concurrent commits included (they
// wait on one lease grant). TestMain checks that no goroutine is left.
func TestEtcdDown(t *testing.T) {
	t.Parallel()
	const timeout = time.Second
	srv := etcdtest.Start(t, etcdtest.Own())
	s := NewWithPrefix(srv.Client(t), testPrefix(t), WithTimeout(timeout))
	if err := s.Commit("seen", []byte("x"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	srv.Stop()

	calls := map[string]func() error{
		"Find":   func() error { _, _, err := s.Find("seen"); return err },
		"Delete": func() error { return s.Delete("seen") },
		"All":    func() error { _, err := s.All(); return err },
		// A remembered token (a guarded Txn) and new ones (grants).
		"Commit seen": func() error { return s.Commit("seen", []byte("y"), time.Now().Add(time.Hour)) },
	}
	for i := range 4 {
		calls[fmt.Sprint("Commit new ", i)] = func() error {
			return s.Commit(fmt.Sprint("new", i), []byte("x"), time.Now().Add(2*time.Hour))
		}
	}
	var wg sync.WaitGroup
	for name, call := range calls {
		wg.Go(func() {
			start := time.Now()
			err := call()
			took := time.Since(start)
			if !errors.Is(err, context.DeadlineExceeded) || !strings.HasPrefix(err.Error(), "etcdstore: ") {
				t.Errorf("%s with etcd down = %v, want an etcdstore: error wrapping context.DeadlineExceeded", name, err)
			}
			// About the timeout: not before it, and not much after it on
			// a loaded machine.
			if took < timeout-50*time.Millisecond || took > timeout+3*time.Second {
				t.Errorf("%s with etcd down returned after %v, want about %v", name, took, timeout)
			}
		})
	}
	wg.Wait()
	st := s.Stats()
	if n := int64(len(calls)); st.Errors.Timeout != n || st.Retries == 0 {
		t.Errorf("stats after %d calls that timed out: %d timeouts, %d retries; want %d and some", n, st.Errors.Timeout, st.Retries, n)
	}
}
