package etcdstore

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/alexedwards/scs/v2"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// Tests of WithTouchInterval and of what the store remembers, on an
// embedded etcd, with the store's clock injected where time matters.

// storedExpiry returns the expiry in the envelope etcd holds for token.
func storedExpiry(t *testing.T, c *clientv3.Client, s *EtcdStore, token string) time.Time {
	t.Helper()
	kv := rawValue(t, c, s, token)
	if kv == nil {
		t.Fatalf("%q: no key", token)
	}
	expiry, ok, _, err := decodeEnvelope(kv.value)
	if err != nil || !ok {
		t.Fatalf("%q: envelope %q: %v", token, kv.value, err)
	}
	return expiry
}

// TestTouchIntervalOnClock plays a session in steady use, on an injected
// clock: a request every 3 minutes, each a Find and a Commit of the same
// data with expiry now + 20 minutes (SCS's IdleTimeout), touch interval
// 10 minutes. It checks that the store writes once per interval, that the
// stored expiry trails the asked one by less than the interval and never
// passes it, and that after the last request the session lives at least
// IdleTimeout - d and at most IdleTimeout.
func TestTouchIntervalOnClock(t *testing.T) {
	t.Parallel()
	const (
		idle = 20 * time.Minute
		d    = idle / 2
		step = 3 * time.Minute
	)
	s, c := newOwnStore(t, WithTouchInterval(d))
	now := time.Now()
	s.now = func() time.Time { return now }
	data := []byte("unchanged")
	if err := s.Commit("tok", data, now.Add(idle)); err != nil {
		t.Fatal(err)
	}

	before := etcdtest.Revision(t, c)
	for i := 1; i <= 20; i++ {
		now = now.Add(step)
		if _, found, err := s.Find("tok"); err != nil || !found {
			t.Fatalf("request %d: Find = %v, %v", i, found, err)
		}
		expiry := now.Add(idle)
		if err := s.Commit("tok", data, expiry); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if lag := expiry.Sub(storedExpiry(t, c, s, "tok")); lag < 0 || lag >= d {
			t.Fatalf("request %d: stored expiry %v before the asked one, want in [0, %v)", i, lag, d)
		}
	}
	// Every fourth request pushes the expiry back by 12 minutes, past d.
	if writes := etcdtest.Revision(t, c) - before; writes != 5 {
		t.Errorf("%d writes for 20 unchanged requests 3 minutes apart, want 5", writes)
	}

	last := now
	now = last.Add(idle - d - time.Nanosecond)
	if _, found, err := s.Find("tok"); err != nil || !found {
		t.Fatalf("IdleTimeout - d after the last request: Find = %v, %v; want found", found, err)
	}
	now = last.Add(idle)
	if _, found, err := s.Find("tok"); err != nil || found {
		t.Fatalf("IdleTimeout after the last request: Find = %v, %v; want expired", found, err)
	}
}

// TestTouchIntervalWritesChanges: changed data is written at once, even
// with the same expiry, and another store reads it; a later expiry for
// unchanged data is written once it is d past the stored one.
func TestTouchIntervalWritesChanges(t *testing.T) {
	t.Parallel()
	s, c := newOwnStore(t, WithTouchInterval(time.Hour))
	other := NewWithPrefix(c, s.keys.prefix)
	expiry := time.Now().Add(2 * time.Hour)
	for i, data := range []string{"one", "two", "", "three"} {
		if err := s.Commit("tok", []byte(data), expiry); err != nil {
			t.Fatal(err)
		}
		got, found, err := other.Find("tok")
		if err != nil || !found || string(got) != data {
			t.Fatalf("#%d: other store's Find = %q, %v, %v; want %q", i, got, found, err, data)
		}
	}
	before := etcdtest.Revision(t, c)
	if err := s.Commit("tok", []byte("three"), expiry.Add(time.Hour-time.Nanosecond)); err != nil {
		t.Fatal(err)
	}
	if n := etcdtest.Revision(t, c) - before; n != 0 {
		t.Fatalf("unchanged, expiry less than d later: %d writes, want 0", n)
	}
	if err := s.Commit("tok", []byte("three"), expiry.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n := etcdtest.Revision(t, c) - before; n != 1 {
		t.Fatalf("unchanged, expiry d later: %d writes, want 1", n)
	}
}

// TestTouchIntervalDecodes: SCS's GobCodec writes a session's values in
// random map order, so the same session often encodes to other bytes;
// those are unchanged and not written. Values that differ are written,
// and so is data the codec cannot decode.
func TestTouchIntervalDecodes(t *testing.T) {
	t.Parallel()
	s, c := newOwnStore(t, WithTouchInterval(time.Hour))
	codec := scs.GobCodec{}
	deadline := time.Now().Add(24 * time.Hour)
	values := map[string]any{"user": "alice", "visits": 3, "theme": "dark", "csrf": "x9"}
	first, err := codec.Encode(deadline, values)
	if err != nil {
		t.Fatal(err)
	}
	expiry := time.Now().Add(2 * time.Hour)
	if err := s.Commit("tok", first, expiry); err != nil {
		t.Fatal(err)
	}
	// Find, as a request does, then encodings of the same session until
	// one differs from the stored bytes.
	if _, _, err := s.Find("tok"); err != nil {
		t.Fatal(err)
	}
	var reordered []byte
	for range 1000 {
		if b, _ := codec.Encode(deadline, values); !bytes.Equal(b, first) {
			reordered = b
			break
		}
	}
	if reordered == nil {
		t.Fatal("1000 encodings of four values all gave the same bytes")
	}
	before := etcdtest.Revision(t, c)
	if err := s.Commit("tok", reordered, expiry); err != nil {
		t.Fatal(err)
	}
	if n := etcdtest.Revision(t, c) - before; n != 0 {
		t.Fatalf("same session in other bytes: %d writes, want 0", n)
	}
	if seen, _ := s.tokens.last("tok"); seen.alt != string(reordered) {
		t.Fatalf("the other bytes were not kept as the alternative: %q", seen.alt)
	}

	changed := map[string]any{"user": "alice", "visits": 4, "theme": "dark", "csrf": "x9"}
	for _, tt := range []struct {
		name string
		data func() []byte
	}{
		{"a value changed", func() []byte { b, _ := codec.Encode(deadline, changed); return b }},
		{"the deadline changed", func() []byte { b, _ := codec.Encode(deadline.Add(time.Second), changed); return b }},
		{"not gob", func() []byte { return []byte("not gob") }},
		{"not gob, other bytes", func() []byte { return []byte("not gob either") }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := etcdtest.Revision(t, c)
			data := tt.data()
			if err := s.Commit("tok", data, expiry); err != nil {
				t.Fatal(err)
			}
			if n := etcdtest.Revision(t, c) - before; n != 1 {
				t.Errorf("%s: %d writes, want 1", tt.name, n)
			}
			if got, _, _ := NewWithPrefix(c, s.keys.prefix).Find("tok"); !bytes.Equal(got, data) {
				t.Errorf("%s: etcd holds %q, want %q", tt.name, got, data)
			}
		})
	}
}

// TestTouchIntervalIsOptIn: without the option every commit writes.
func TestTouchIntervalIsOptIn(t *testing.T) {
	t.Parallel()
	s, c := newOwnStore(t)
	expiry := time.Now().Add(time.Hour)
	before := etcdtest.Revision(t, c)
	for range 5 {
		if _, _, err := s.Find("tok"); err != nil {
			t.Fatal(err)
		}
		if err := s.Commit("tok", []byte("same"), expiry); err != nil {
			t.Fatal(err)
		}
	}
	if n := etcdtest.Revision(t, c) - before; n != 5 {
		t.Fatalf("%d writes for 5 commits without WithTouchInterval, want 5", n)
	}
}

// TestTouchIntervalConcurrent runs Find, Commit and Delete on one token
// from many goroutines sharing one store with the touch interval on (run
// it with -race), then checks that the store still writes and reads it.
func TestTouchIntervalConcurrent(t *testing.T) {
	t.Parallel()
	s, c := newStore(t, WithTouchInterval(time.Minute))
	ctx := ctxFor(t)
	expiry := time.Now().Add(time.Hour)
	var group errgroup.Group
	for g := range 16 {
		group.Go(func() error {
			for i := range 25 {
				var err error
				switch {
				case g == 0 && i == 12:
					err = s.DeleteCtx(ctx, "tok")
				case g%4 == 0:
					err = s.CommitCtx(ctx, "tok", fmt.Appendf(nil, "g%d-%d", g, i), expiry)
				default:
					var b []byte
					if b, _, err = s.FindCtx(ctx, "tok"); err == nil && b != nil {
						err = s.CommitCtx(ctx, "tok", b, expiry.Add(time.Duration(i)*time.Second))
					}
				}
				if err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := group.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit("fresh", []byte("last"), expiry); err != nil {
		t.Fatal(err)
	}
	if got, found, err := NewWithPrefix(c, s.keys.prefix).Find("fresh"); err != nil || !found || string(got) != "last" {
		t.Fatalf("after the concurrent run: Find = %q, %v, %v", got, found, err)
	}
}

// TestCommitAfterDelete: a session, once deleted by this store or
// another, is not written again by a commit, which returns nil, whether
// the store saw the token stored or never saw it.
func TestCommitAfterDelete(t *testing.T) {
	t.Parallel()
	s, c := newStore(t)
	other := NewWithPrefix(c, s.keys.prefix)
	expiry := time.Now().Add(time.Hour)
	ctx := context.Background()
	for _, tt := range []struct {
		name string
		seen func(token string) error // makes s see the session stored
		del  *EtcdStore
	}{
		{"written here, deleted here", func(tok string) error { return s.Commit(tok, []byte("a"), expiry) }, s},
		{"written here, deleted elsewhere", func(tok string) error { return s.Commit(tok, []byte("a"), expiry) }, other},
		{"found here, deleted elsewhere", func(tok string) error {
			if err := other.Commit(tok, []byte("a"), expiry); err != nil {
				return err
			}
			_, _, err := s.Find(tok)
			return err
		}, other},
		{"listed here, deleted elsewhere", func(tok string) error {
			if err := other.Commit(tok, []byte("a"), expiry); err != nil {
				return err
			}
			_, err := s.All()
			return err
		}, other},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tok := t.Name()
			if err := tt.seen(tok); err != nil {
				t.Fatal(err)
			}
			if err := tt.del.DeleteCtx(ctx, tok); err != nil {
				t.Fatal(err)
			}
			if err := s.Commit(tok, []byte("back"), expiry); err != nil {
				t.Fatalf("commit after delete: %v, want nil", err)
			}
			if kv := rawSession(t, c, s, tok); kv != nil {
				t.Fatalf("commit after delete wrote the session again: %q", kv.value)
			}
		})
	}
	// A store that never saw the token finds the tombstone.
	t.Run("never seen", func(t *testing.T) {
		if err := other.Commit("new", []byte("a"), expiry); err != nil {
			t.Fatal(err)
		}
		if err := other.Delete("new"); err != nil {
			t.Fatal(err)
		}
		if err := s.Commit("new", []byte("b"), expiry); err != nil {
			t.Fatal(err)
		}
		if kv := rawSession(t, c, s, "new"); kv != nil {
			t.Fatalf("a commit of a token the store never saw wrote a session deleted elsewhere again: %q", kv.value)
		}
	})
}

// TestRememberedTokensBound: past the bound the store forgets the least
// recently used token. A forgotten token deleted elsewhere still stays
// deleted: its commit, made on the key's absence, finds the tombstone.
func TestRememberedTokensBound(t *testing.T) {
	t.Parallel()
	s, c := newStore(t, WithRememberedTokens(2))
	other := NewWithPrefix(c, s.keys.prefix)
	expiry := time.Now().Add(time.Hour)
	for _, tok := range []string{"a", "b", "c"} {
		if err := s.Commit(tok, []byte(tok), expiry); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.tokens.len(); n != 2 {
		t.Fatalf("remembers %d tokens, want the bound, 2", n)
	}
	if _, known := s.tokens.last("a"); known {
		t.Fatal(`"a", the least recently used, is still remembered`)
	}
	for _, tok := range []string{"a", "c"} {
		if err := other.Delete(tok); err != nil {
			t.Fatal(err)
		}
		if err := s.Commit(tok, []byte("again"), expiry); err != nil {
			t.Fatal(err)
		}
		if kv := rawSession(t, c, s, tok); kv != nil {
			t.Errorf("%q was written again after its delete: %q", tok, kv.value)
		}
	}
	if got := s.Stats().ResurrectionsRefused; got != 2 {
		t.Errorf("ResurrectionsRefused = %d, want 2", got)
	}
}
