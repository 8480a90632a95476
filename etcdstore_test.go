package etcdstore

import (
	"bytes"
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/alexedwards/scs/v2"
	clientv3 "go.etcd.io/etcd/client/v3"

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

	// Delete leaves a tombstone on a lease of the request bound's.
	if err := s.Delete("tok"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if b, found, err := s.Find("tok"); err != nil || found || b != nil {
		t.Fatalf("after Delete Find = %q, %v, %v; want nil, false, nil", b, found, err)
	}
	if kv := rawValue(t, c, s, "tok"); kv == nil || !isTombstone(kv.value) {
		t.Fatalf("after Delete the key holds %+v, want a tombstone", kv)
	}
	if left := leaseLeft(t, c, s.keys.key("tok")); left < int64(defaultMaxRequestDuration/time.Second)-5 {
		t.Fatalf("the tombstone's lease has %d s left, want about the request bound, %v", left, defaultMaxRequestDuration)
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
	defaults := options{maxKeys: 1000, pageSize: 1000, codec: codec, remembered: 100_000, timeout: 5 * time.Second, request: 5 * time.Minute, keepAlive: time.Minute}
	for _, tc := range []struct {
		name string
		in   options
		want options
	}{
		{"none", options{}, defaults},
		{"negative", options{bucket: -1, maxKeys: -1, pageSize: -1, touch: -1, remembered: -1, timeout: -1, request: -1, keepAlive: -1}, defaults},
		{"set", options{bucket: time.Minute, maxKeys: 10, pageSize: 20, touch: time.Second, codec: codec, remembered: 30, timeout: time.Hour, principal: "user", cache: true, request: time.Second, keepAlive: 2 * time.Second},
			options{bucket: time.Minute, maxKeys: 10, pageSize: 20, touch: time.Second, codec: codec, remembered: 30, timeout: time.Hour, principal: "user", cache: true, request: time.Second, keepAlive: 2 * time.Second}},
	} {
		if got := tc.in.withDefaults(); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: withDefaults() = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
