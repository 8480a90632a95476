package etcdstore

import (
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// Ending a session: every end leaves a tombstone that lives the request
// bound, whatever the key held, and a commit does what etcd holds says,
// whatever its app server remembers. Each app server here is a store on a
// client of its own; clocks are the stores' own (s.now), moved by hand,
// and the end of a lease is its revoke, as etcd's leader makes it.

// appServers returns n stores on one etcd, each on a client of its own,
// under one prefix, with opts, and a client for checking what they wrote.
func appServers(t *testing.T, n int, opts ...Option) ([]*EtcdStore, *clientv3.Client) {
	t.Helper()
	srv := etcdtest.Start(t)
	stores := make([]*EtcdStore, n)
	for i := range stores {
		stores[i] = NewWithPrefix(srv.Client(t), testPrefix(t), opts...)
	}
	return stores, srv.Client(t)
}

// setClock sets the clock of every store to now.
func setClock(now time.Time, stores ...*EtcdStore) {
	for _, s := range stores {
		s.now = func() time.Time { return now }
	}
}

// leaseLeft returns the TTL left, in seconds, of the lease of key, which
// must have one.
func leaseLeft(t *testing.T, c *clientv3.Client, key string) int64 {
	t.Helper()
	kv := currentKV(t, c, key)
	if kv.Lease == 0 {
		t.Fatalf("%q has no lease", key)
	}
	resp, err := c.TimeToLive(ctxFor(t), clientv3.LeaseID(kv.Lease))
	if err != nil {
		t.Fatal(err)
	}
	return resp.TTL
}

// forget makes s, a store that remembers one token, forget token, as a
// busy app server turns its memory over: it commits another session.
func forget(t *testing.T, s *EtcdStore, token string) {
	t.Helper()
	if err := s.Commit(token+"-other", []byte("other"), time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.tokens.last(token); ok {
		t.Fatalf("the store still remembers %q", token)
	}
}

// revokeLeaseOf ends the lease of key, as etcd's leader does once its TTL
// has passed, and so removes key.
func revokeLeaseOf(t *testing.T, c *clientv3.Client, key string) {
	t.Helper()
	if _, err := c.Revoke(ctxFor(t), clientv3.LeaseID(currentKV(t, c, key).Lease)); err != nil {
		t.Fatal(err)
	}
}

// TestLogoutEverywhereAfterExpiry: a request loads a session, its expiry
// passes while the request runs, and "log out everywhere" on another app
// server ends it, though no longer live: the request's commit, with a new
// expiry, does not bring it back. On the previous code
// DeleteByPrincipal ended only live sessions and the commit wrote it back.
func TestLogoutEverywhereAfterExpiry(t *testing.T) {
	t.Parallel()
	stores, _ := appServers(t, 3, WithPrincipal("user"), WithLeaseBucket(time.Second))
	a, b, c := stores[0], stores[1], stores[2]
	start := time.Now()
	setClock(start, a, b, c)
	if err := a.Commit("tok", userData(t, "alice", "x"), start.Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, found, err := a.Find("tok"); !found || err != nil {
		t.Fatalf("Find = %v, %v; want found", found, err)
	}
	// The request runs past the session's expiry; etcd still holds the key.
	setClock(start.Add(3*time.Second), a, b, c)
	n, err := b.DeleteByPrincipal(ctxFor(t), "alice")
	if err != nil || n != 1 {
		t.Fatalf("DeleteByPrincipal = %d, %v; want the expired session ended, 1", n, err)
	}
	if err := a.Commit("tok", userData(t, "alice", "y"), start.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, found, _ := c.Find("tok"); found {
		t.Error("the request in flight brought back a session that \"log out everywhere\" ended")
	}
	if got, _ := c.FindByPrincipal(ctxFor(t), "alice"); len(got) != 0 {
		t.Errorf("FindByPrincipal(alice) = %d sessions, want 0", len(got))
	}
}

// TestTombstoneLivesTheRequestBound: the tombstone a logout leaves lives
// the request bound (WithMaxRequestDuration), not until the session's
// own expiry, so the slow request of an app server that forgot the token
// cannot commit it again on the key's absence. On the previous code the
// tombstone rode the session's lease, 6 s here.
func TestTombstoneLivesTheRequestBound(t *testing.T) {
	t.Parallel()
	const bound = 60 * time.Second
	stores, c := appServers(t, 3, WithRememberedTokens(1), WithLeaseBucket(time.Second), WithMaxRequestDuration(bound))
	a, b, other := stores[0], stores[1], stores[2]
	if err := a.Commit("tok", []byte("v1"), time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, found, err := a.Find("tok"); !found || err != nil {
		t.Fatalf("Find = %v, %v; want found", found, err)
	}
	forget(t, a, "tok")
	if err := b.Delete("tok"); err != nil {
		t.Fatal(err)
	}
	key := a.keys.key("tok")
	if left := leaseLeft(t, c, key); left < int64((bound-5*time.Second)/time.Second) {
		t.Fatalf("the tombstone's lease has %d s left, want about %v", left, bound)
	}
	if err := a.Commit("tok", []byte("v2"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, found, _ := other.Find("tok"); found {
		t.Error("an app server that forgot the token brought a logged-out session back")
	}
}

// TestDeleteOfNothingLeavesATombstone: ending a session whose key etcd
// already removed still leaves a tombstone, so a request that loaded the
// session before does not commit it again.
func TestDeleteOfNothingLeavesATombstone(t *testing.T) {
	t.Parallel()
	stores, c := appServers(t, 2, WithLeaseBucket(time.Second))
	a, b := stores[0], stores[1]
	if err := a.Commit("tok", []byte("v1"), time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, found, err := a.Find("tok"); !found || err != nil {
		t.Fatalf("Find = %v, %v; want found", found, err)
	}
	revokeLeaseOf(t, c, a.keys.key("tok"))
	if err := b.Delete("tok"); err != nil {
		t.Fatal(err)
	}
	if v := rawValue(t, c, a, "tok"); v == nil || !isTombstone(v.value) {
		t.Fatalf("after a delete of an absent key etcd holds %v, want a tombstone", v)
	}
	if err := a.Commit("tok", []byte("v2"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, found, _ := b.Find("tok"); found {
		t.Error("a request in flight brought back a session ended after etcd removed its key")
	}
}

// TestCommitAfterKeyRemoved: a request loads a session, etcd removes its
// key after its expiry, and the request commits it with a new expiry: the
// commit writes it on every app server alike, the one that remembers the
// token and the one that forgot it. An expiry is no logout. On the
// previous code the first wrote nothing and returned nil.
func TestCommitAfterKeyRemoved(t *testing.T) {
	t.Parallel()
	stores, c := appServers(t, 3, WithRememberedTokens(1), WithLeaseBucket(time.Second))
	remembers, forgot, reader := stores[0], stores[1], stores[2]
	for i, s := range []*EtcdStore{remembers, forgot} {
		token := []string{"remembered", "forgotten"}[i]
		if err := s.Commit(token, []byte("old"), time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if _, found, err := s.Find(token); !found || err != nil {
			t.Fatalf("Find(%s) = %v, %v; want found", token, found, err)
		}
	}
	forget(t, forgot, "forgotten")
	for i, s := range []*EtcdStore{remembers, forgot} {
		token := []string{"remembered", "forgotten"}[i]
		revokeLeaseOf(t, c, s.keys.key(token))
		if err := s.Commit(token, []byte("new"), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if b, found, err := reader.Find(token); !found || err != nil || string(b) != "new" {
			t.Errorf("%s token: Find after the commit = %q, %v, %v; want \"new\" written", token, b, found, err)
		}
	}
}

// TestCommitAfterOwnLogout: a commit of a session its own app server
// ended is refused by the tombstone, as on any other app server, and,
// once the tombstone's lease has ended, written, as on any other: the
// store's memory decides nothing.
func TestCommitAfterOwnLogout(t *testing.T) {
	t.Parallel()
	stores, c := appServers(t, 2)
	a, reader := stores[0], stores[1]
	if err := a.Commit("tok", []byte("v1"), time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := a.Delete("tok"); err != nil {
		t.Fatal(err)
	}
	if err := a.Commit("tok", []byte("v2"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, found, _ := reader.Find("tok"); found {
		t.Fatal("a commit wrote over the tombstone")
	}
	if got := a.Stats().ResurrectionsRefused; got != 1 {
		t.Errorf("ResurrectionsRefused = %d, want 1", got)
	}
	revokeLeaseOf(t, c, a.keys.key("tok"))
	if err := a.Commit("tok", []byte("v3"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if b, found, _ := reader.Find("tok"); !found || string(b) != "v3" {
		t.Errorf("after the tombstone's lease ended: Find = %q, %v; want \"v3\", as a forgotten token's commit writes", b, found)
	}
}

// TestPrincipalKeysOutliveExpiry: with WithPrincipal, a session's key and
// its index entry last the request bound past its expiry, so that
// DeleteByPrincipal finds a session whose expiry passed while a request
// was in flight.
func TestPrincipalKeysOutliveExpiry(t *testing.T) {
	t.Parallel()
	const bound = 90 * time.Second
	s, c := newStore(t, WithPrincipal("user"), WithLeaseBucket(time.Second), WithMaxRequestDuration(bound))
	if err := s.Commit("tok", userData(t, "alice", ""), time.Now().Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	want := int64((bound + 5*time.Second) / time.Second)
	for _, key := range []string{s.keys.key("tok"), entryOf(s, "alice", "tok")} {
		if left := leaseLeft(t, c, key); left < want {
			t.Errorf("%q: lease has %d s left, want at least %d (expiry plus the request bound)", key, left, want)
		}
	}
}
