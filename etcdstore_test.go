package etcdstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alexedwards/scs/v2"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// The store implements every store interface SCS looks for.
var (
	_ scs.Store            = (*EtcdStore)(nil)
	_ scs.CtxStore         = (*EtcdStore)(nil)
	_ scs.IterableStore    = (*EtcdStore)(nil)
	_ scs.IterableCtxStore = (*EtcdStore)(nil)
)

// newStore starts an etcd for the test and returns a store on it under a
// prefix of the test's own, and a client of the same server for checking
// what the store wrote.
func newStore(t *testing.T, opts ...Option) (*EtcdStore, *clientv3.Client) {
	t.Helper()
	srv := etcdtest.Start(t)
	c := srv.Client(t)
	return NewWithPrefix(c, testPrefix(t), opts...), c
}

// newOwnStore is newStore on a member of the test's own, for tests that
// count its revisions or leases (see etcdtest.Own).
func newOwnStore(t *testing.T, opts ...Option) (*EtcdStore, *clientv3.Client) {
	t.Helper()
	c := etcdtest.Start(t, etcdtest.Own()).Client(t)
	return NewWithPrefix(c, testPrefix(t), opts...), c
}

func testPrefix(t *testing.T) string {
	t.Helper()
	return "test:" + t.Name() + ":"
}

func ctxFor(t *testing.T) context.Context {
	t.Helper()
	return etcdtest.Context(t, 30*time.Second)
}

// rawValue returns what etcd holds at the session's key, or nil.
func rawValue(t *testing.T, c *clientv3.Client, s *EtcdStore, token string) *rawKV {
	t.Helper()
	resp, err := c.Get(ctxFor(t), s.keys.prefix+token)
	if err != nil {
		t.Fatalf("raw get %q: %v", token, err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	kv := resp.Kvs[0]
	return &rawKV{value: kv.Value, lease: clientv3.LeaseID(kv.Lease)}
}

// rawSession returns what rawValue does, and nil for a tombstone: a
// session deleted.
func rawSession(t *testing.T, c *clientv3.Client, s *EtcdStore, token string) *rawKV {
	t.Helper()
	kv := rawValue(t, c, s, token)
	if kv != nil && isTombstone(kv.value) {
		return nil
	}
	return kv
}

type rawKV struct {
	value []byte
	lease clientv3.LeaseID
}

func TestCommitFindDelete(t *testing.T) {
	t.Parallel()
	s, c := newStore(t)
	expiry := time.Now().Add(time.Hour)

	if err := s.Commit("tok", []byte("hello"), expiry); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	b, found, err := s.Find("tok")
	if err != nil || !found || string(b) != "hello" {
		t.Fatalf("Find = %q, %v, %v; want hello, true, nil", b, found, err)
	}

	// The key holds the envelope with the expiry, on a lease that lasts
	// at least until the expiry.
	kv := rawValue(t, c, s, "tok")
	if kv == nil || kv.lease == 0 {
		t.Fatalf("key %q: %+v, want a value on a lease", s.keys.prefix+"tok", kv)
	}
	gotExpiry, ok, data, err := decodeEnvelope(kv.value)
	if err != nil || !ok || !gotExpiry.Equal(expiry) || string(data) != "hello" {
		t.Fatalf("envelope = %v, %v, %q, %v; want %v, true, hello, nil", gotExpiry, ok, data, err, expiry)
	}
	ttl, err := c.TimeToLive(ctxFor(t), kv.lease)
	if err != nil {
		t.Fatalf("TimeToLive: %v", err)
	}
	if left := time.Duration(ttl.TTL) * time.Second; left < time.Until(expiry)-time.Second {
		t.Fatalf("lease has %v left, session %v", left, time.Until(expiry))
	}

	// Commit overwrites data and expiry.
	if err := s.Commit("tok", []byte("again"), expiry.Add(time.Hour)); err != nil {
		t.Fatalf("second Commit: %v", err)
	}
	if b, _, _ := s.Find("tok"); string(b) != "again" {
		t.Fatalf("after overwrite Find = %q, want again", b)
	}

	// Delete leaves a tombstone on the session's lease.
	lease := rawValue(t, c, s, "tok").lease
	if err := s.Delete("tok"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if b, found, err := s.Find("tok"); err != nil || found || b != nil {
		t.Fatalf("after Delete Find = %q, %v, %v; want nil, false, nil", b, found, err)
	}
	if kv := rawValue(t, c, s, "tok"); kv == nil || !isTombstone(kv.value) || kv.lease != lease {
		t.Fatalf("after Delete the key holds %+v, want a tombstone on the session's lease %x", kv, lease)
	}
	if err := s.Delete("tok"); err != nil {
		t.Fatalf("Delete of a missing token = %v, want nil", err)
	}
}

func TestFindMissing(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	b, found, err := s.FindCtx(ctxFor(t), "nobody")
	if err != nil || found || b != nil {
		t.Fatalf("Find = %q, %v, %v; want nil, false, nil", b, found, err)
	}
}

// TestFindHidesExpired: once the envelope's expiry has passed, Find and
// All treat the session as gone, although its lease (at least 2 s, shared,
// extended on leader change) still holds the key.
func TestFindHidesExpired(t *testing.T) {
	t.Parallel()
	s, c := newStore(t)
	now := time.Now()
	expiry := now.Add(time.Hour)
	if err := s.Commit("tok", []byte("x"), expiry); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		at    time.Time
		found bool
	}{
		{expiry.Add(-time.Nanosecond), true},
		{expiry, false}, // the expiry itself is past: SCS treats a deadline as exclusive
		{expiry.Add(time.Minute), false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("expiry%+v", tt.at.Sub(expiry)), func(t *testing.T) {
			s.now = func() time.Time { return tt.at }
			_, found, err := s.Find("tok")
			if err != nil || found != tt.found {
				t.Errorf("at expiry%+v: Find found=%v err=%v, want found=%v", tt.at.Sub(expiry), found, err, tt.found)
			}
			all, err := s.All()
			if err != nil || (len(all) == 1) != tt.found {
				t.Errorf("at expiry%+v: All = %d sessions, %v; want found=%v", tt.at.Sub(expiry), len(all), err, tt.found)
			}
		})
	}
	if rawValue(t, c, s, "tok") == nil {
		t.Fatal("key is gone: the test shows nothing about the envelope")
	}
}

// TestShortExpiry: sessions of under a second and of about 1.5 s, both
// shorter than etcd's 2 s minimum lease TTL, are found before their expiry
// and not found right after it, on the real clock.
func TestShortExpiry(t *testing.T) {
	t.Parallel()
	s, c := newStore(t)
	for _, life := range []time.Duration{300 * time.Millisecond, 1500 * time.Millisecond} {
		token := fmt.Sprintf("short-%v", life)
		expiry := time.Now().Add(life)
		if err := s.Commit(token, []byte("x"), expiry); err != nil {
			t.Fatalf("%v: Commit: %v", life, err)
		}
		if _, found, err := s.Find(token); err != nil || !found {
			if time.Now().Before(expiry) {
				t.Fatalf("%v: Find before expiry: found=%v err=%v", life, found, err)
			}
		}
		time.Sleep(time.Until(expiry) + time.Millisecond)
		if _, found, err := s.Find(token); err != nil || found {
			t.Fatalf("%v: Find after expiry: found=%v err=%v, want not found", life, found, err)
		}
		if rawValue(t, c, s, token) == nil {
			t.Logf("%v: etcd already removed the key", life)
		}
	}
}

func TestCommitPastExpiryDeletes(t *testing.T) {
	t.Parallel()
	s, c := newStore(t)
	if err := s.Commit("tok", []byte("x"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, expiry := range []time.Time{time.Now(), time.Now().Add(-time.Hour), {}} {
		if err := s.Commit("tok", []byte("x"), expiry); err != nil {
			t.Fatalf("Commit with expiry %v: %v, want nil", expiry, err)
		}
		if kv := rawSession(t, c, s, "tok"); kv != nil {
			t.Fatalf("Commit with expiry %v left the session", expiry)
		}
	}
}

func TestCommitRejects(t *testing.T) {
	t.Parallel()
	s, c := newStore(t)
	long := strings.Repeat("a", MaxTokenLen+1)
	tests := []struct {
		name, token string
		expiry      time.Time
		want        string
	}{
		{"long token", long, time.Now().Add(time.Hour), "longer than MaxTokenLen"},
		{"expiry after 2262", "tok", time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC), "after the latest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Commit(tt.token, []byte("x"), tt.expiry)
			if err == nil || !strings.HasPrefix(err.Error(), "etcdstore: ") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%s: Commit = %v, want an etcdstore: error saying %q", tt.name, err, tt.want)
			}
		})
	}
	resp, err := c.Get(ctxFor(t), s.keys.prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Fatalf("rejected commits wrote %d keys (err %v)", resp.Count, err)
	}
	// Exactly MaxTokenLen is fine.
	token := strings.Repeat("b", MaxTokenLen)
	if err := s.Commit(token, []byte("x"), time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("Commit with a %d-byte token: %v", MaxTokenLen, err)
	}
	if _, found, _ := s.Find(token); !found {
		t.Fatalf("%d-byte token not found", MaxTokenLen)
	}
}

// TestInvalidTokensNeedNoRequest: Find and Delete answer for tokens no
// session can have, longer than MaxTokenLen, without asking etcd, so they
// work even on a closed client.
func TestInvalidTokensNeedNoRequest(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	c := srv.Client(t)
	s := New(c)
	c.Close()
	for _, token := range []string{strings.Repeat("x", MaxTokenLen+1), strings.Repeat("x", 1<<20)} {
		if b, found, err := s.Find(token); b != nil || found || err != nil {
			t.Errorf("Find(%d bytes) = %v, %v, %v; want nil, false, nil", len(token), b, found, err)
		}
		if err := s.Delete(token); err != nil {
			t.Errorf("Delete(%d bytes) = %v, want nil", len(token), err)
		}
	}
}

func TestAll(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	c := srv.Client(t)
	ctx := ctxFor(t)
	// A small page size makes the scan take several pages.
	s := NewWithPrefix(c, "app:", WithPageSize(3))

	all, err := s.All()
	if err != nil || all == nil || len(all) != 0 {
		t.Fatalf("empty store: All = %v (nil: %v), %v; want an empty non-nil map", all, all == nil, err)
	}

	// Keys outside the prefix range, on both sides and under a sibling
	// prefix, must never be listed.
	for _, k := range []string{"ap", "app", "app;x", "apq:", "b", "app:\xff"[:3] + "\x00"} {
		if _, err := c.Put(ctx, k, "outside"); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]string{}
	for i := range 10 {
		token := fmt.Sprintf("tok%02d", i)
		want[token] = "data" + token
		if err := s.Commit(token, []byte(want[token]), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	// A legacy value (no envelope) is listed; an expired one is not.
	if _, err := c.Put(ctx, "app:legacy", "raw-codec-bytes"); err != nil {
		t.Fatal(err)
	}
	want["legacy"] = "raw-codec-bytes"
	expired := NewWithPrefix(c, "app:")
	expired.now = func() time.Time { return time.Now().Add(-2 * time.Hour) }
	if err := expired.Commit("old", []byte("x"), time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}

	all, err = s.AllCtx(ctx)
	if err != nil {
		t.Fatalf("All: %v", err)
	}
	if len(all) != len(want) {
		t.Errorf("All returned %d sessions, want %d: %q", len(all), len(want), all)
	}
	for token, data := range want {
		if string(all[token]) != data {
			t.Errorf("All[%q] = %q, want %q", token, all[token], data)
		}
	}
}

// TestAllIsOneSnapshot moves a session between the first and the last key
// of the prefix range, each move in one transaction, while All reads the
// range a key per page. Every snapshot holds it exactly once; reading
// each page at the current revision would see it twice or not at all.
func TestAllIsOneSnapshot(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	c := srv.Client(t)
	ctx := ctxFor(t)
	s := NewWithPrefix(c, "snap:", WithPageSize(1))
	expiry := time.Now().Add(time.Hour)
	for i := range 20 {
		if err := s.Commit(fmt.Sprintf("m%02d", i), []byte("x"), expiry); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Commit("a", []byte("x"), expiry); err != nil {
		t.Fatal(err)
	}
	value := encodeEnvelope(expiry, []byte("x"))
	move := func(from, to string) {
		_, err := c.Txn(ctx).Then(clientv3.OpDelete("snap:"+from), clientv3.OpPut("snap:"+to, value)).Commit()
		if err != nil {
			t.Errorf("move: %v", err)
		}
	}
	pages := 0
	s.keys.betweenPages = func() {
		pages++
		if pages%2 == 1 {
			move("a", "z")
		} else {
			move("z", "a")
		}
	}
	for round := range 5 {
		all, err := s.All()
		if err != nil {
			t.Fatal(err)
		}
		_, a := all["a"]
		_, z := all["z"]
		if a == z || len(all) != 21 {
			t.Fatalf("round %d: snapshot holds a=%v z=%v, %d sessions; want exactly one of them, 21", round, a, z, len(all))
		}
	}
	if pages < 20 {
		t.Fatalf("only %d pages read: the scan was not paged", pages)
	}
}

// TestAllRestartsAfterCompaction compacts the keyspace past the scan's
// revision in the middle of a scan: the scan starts over once; a second
// compaction gives an error that says so.
func TestAllRestartsAfterCompaction(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t, etcdtest.Own())
	c := srv.Client(t)
	ctx := ctxFor(t)
	s := NewWithPrefix(c, "comp:", WithPageSize(2))
	for i := range 6 {
		if err := s.Commit(fmt.Sprintf("t%d", i), []byte("x"), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	compact := func() {
		// A write moves the revision on, so the compaction passes the
		// scan's revision.
		resp, err := c.Put(ctx, "other", "x")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Compact(ctx, resp.Header.Revision); err != nil {
			t.Fatal(err)
		}
	}

	compactions := 0
	s.keys.betweenPages = func() {
		if compactions == 0 {
			compactions++
			compact()
		}
	}
	all, err := s.All()
	if err != nil || len(all) != 6 {
		t.Fatalf("one compaction: All = %d sessions, %v; want 6, nil", len(all), err)
	}

	s.keys.betweenPages = compact // every page
	_, err = s.All()
	if !errors.Is(err, rpctypes.ErrCompacted) || !strings.HasPrefix(err.Error(), "etcdstore: ") {
		t.Fatalf("repeated compactions: All error = %v, want an etcdstore: error wrapping ErrCompacted", err)
	}

	s.keys.betweenPages = nil
	if all, err := s.All(); err != nil || len(all) != 6 {
		t.Fatalf("after the compactions: All = %d sessions, %v; want 6, nil", len(all), err)
	}
}

// TestLegacyValue: a session written by github.com/alexedwards/scs/etcdstore
// (raw codec bytes on a lease) is read as is, so switching stores logs
// nobody out; a new Commit upgrades it to the envelope.
func TestLegacyValue(t *testing.T) {
	t.Parallel()
	s, c := newStore(t)
	ctx := ctxFor(t)
	// What SCS's gob codec writes starts with a message length, never NUL.
	legacy := []byte("\x1c\xff\x81\x03\x01\x01\x0bsessionData")
	lease, err := c.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, s.keys.prefix+"old", string(legacy), clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	b, found, err := s.Find("old")
	if err != nil || !found || !bytes.Equal(b, legacy) {
		t.Fatalf("Find legacy = %q, %v, %v; want the raw bytes", b, found, err)
	}
	if err := s.Commit("old", b, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, ok, _, _ := decodeEnvelope(rawValue(t, c, s, "old").value); !ok {
		t.Fatal("Commit did not write the envelope")
	}
}

// TestLegacyValueExpires: a legacy session, whose expiry is its lease's,
// is not returned once its lease has ended, though etcd deletes the key
// only at its next expiry check (every 500 ms on the leader).
func TestLegacyValueExpires(t *testing.T) {
	t.Parallel()
	s, c := newStore(t)
	ctx := ctxFor(t)
	lease, err := c.Grant(ctx, 2) // the least TTL an embedded member allows
	if err != nil {
		t.Fatal(err)
	}
	// The lease ends no later than 2 s after the grant's answer.
	end := time.Now().Add(time.Duration(lease.TTL) * time.Second)
	if _, err := c.Put(ctx, s.keys.prefix+"old", "legacy", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	if _, found, err := s.Find("old"); err != nil || !found {
		t.Fatalf("live legacy session: found %v, err %v", found, err)
	}
	var late int // Finds after the end that saw the key still in etcd
	for i := 0; i < 100 && time.Since(end) < 1500*time.Millisecond; i++ {
		time.Sleep(20 * time.Millisecond)
		start := time.Now()
		_, found, err := s.Find("old")
		if err != nil {
			t.Fatal(err)
		}
		if found && start.After(end) {
			t.Fatalf("legacy session returned %v after its lease ended", start.Sub(end))
		}
		if start.After(end) && rawValue(t, c, s, "old") != nil {
			late++
		}
	}
	t.Logf("%d Finds after the lease ended saw the key still in etcd", late)
}

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
		if _, err := s.All(); err == nil || !strings.Contains(err.Error(), "bad") {
			t.Errorf("All with %q = %v, want an error naming the key", bad, err)
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

func TestConstructors(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	c := srv.Client(t)
	if s := New(c); s.keys.prefix != "scs:session:" || s.keys.end != "scs:session;" {
		t.Errorf("New: prefix %q, range end %q", s.keys.prefix, s.keys.end)
	}
	s := NewWithPrefix(c, "p:", WithPageSize(-1), WithMaxKeysPerLease(0), WithLeaseBucket(-time.Second))
	if s.keys.pageSize != defaultPageSize || s.leases.maxKeys != defaultMaxKeysPerLease || s.leases.fixed > 0 {
		t.Errorf("non-positive options: page %d, keys %d, bucket %v; want the defaults", s.keys.pageSize, s.leases.maxKeys, s.leases.fixed)
	}
	// The panics: TestConstructorPanics; the defaults: TestWithDefaults.
}

// TestWithDefaults: every option left out, zero or negative gets its
// default; the others stay as set.
func TestWithDefaults(t *testing.T) {
	codec := scs.GobCodec{}
	defaults := options{maxKeys: 1000, pageSize: 1000, codec: codec, remembered: 100_000, timeout: 5 * time.Second}
	for _, tc := range []struct {
		name string
		in   options
		want options
	}{
		{"none", options{}, defaults},
		{"negative", options{bucket: -1, maxKeys: -1, pageSize: -1, touch: -1, remembered: -1, timeout: -1}, defaults},
		{"set", options{bucket: time.Minute, maxKeys: 10, pageSize: 20, touch: time.Second, codec: codec, remembered: 30, timeout: time.Hour, principal: "user", cache: true},
			options{bucket: time.Minute, maxKeys: 10, pageSize: 20, touch: time.Second, codec: codec, remembered: 30, timeout: time.Hour, principal: "user", cache: true}},
	} {
		if got := tc.in.withDefaults(); got != tc.want {
			t.Errorf("%s: withDefaults() = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
