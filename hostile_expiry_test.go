package etcdstore

import (
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// TestHostileExpiry commits sessions whose expiry is the zero time, long
// past, or after the latest the envelope can hold. An expiry in the past
// deletes the session; a later one than the store can keep is refused
// and leaves the session as it was.
func TestHostileExpiry(t *testing.T) {
	t.Parallel()
	e := newHostileEnv(t)

	for i, expiry := range []time.Time{
		{},
		time.Unix(-1<<62, 0),
		time.Now().Add(-time.Nanosecond),
	} {
		// A new token each time: the store does not write a session it
		// deleted again.
		tok := fmt.Sprint("past", i)
		e.want[tok] = []byte("data")
		e.commit(e.s, tok, e.want[tok])
		e.check("Commit")
		if err := e.s.Commit(tok, []byte("past"), expiry); err != nil {
			t.Fatalf("#%d: Commit with expiry %v: %v", i, expiry, err)
		}
		delete(e.want, tok)
		e.check(fmt.Sprintf("Commit with expiry %v", expiry))
	}

	e.want["tok"] = []byte("data")
	e.commit(e.s, "tok", e.want["tok"])
	for i, expiry := range []time.Time{
		latestExpiry.Add(time.Nanosecond),
		time.Unix(1<<62, 0),
	} {
		err := e.s.Commit("tok", []byte("late"), expiry)
		if err == nil || !strings.HasPrefix(err.Error(), "etcdstore: ") {
			t.Fatalf("#%d: Commit with expiry %v = %v, want an etcdstore: error", i, expiry, err)
		}
		e.check(fmt.Sprintf("Commit with expiry %v", expiry))
	}

	// The store still works.
	e.commit(e.s, "after", []byte("after data"))
	e.want["after"] = []byte("after data")
	e.check("the hostile expiries")
}

// TestExpiryNearLatestKeepsLease commits sessions whose expiry is at or
// near the latest the store accepts. Each must be kept, on a lease that
// lasts at least until its expiry: a shorter lease lets etcd delete the
// session long before it expires.
func TestExpiryNearLatestKeepsLease(t *testing.T) {
	t.Parallel()
	e := newHostileEnv(t)
	ctx := etcdtest.Context(t, 30*time.Second)
	for i, expiry := range []time.Time{
		latestExpiry,
		latestExpiry.Add(-time.Second),
		latestExpiry.Add(-90 * time.Second),
		time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC),
	} {
		tok := fmt.Sprintf("far%d", i)
		data := []byte(expiry.String())
		if err := e.s.Commit(tok, data, expiry); err != nil {
			t.Fatalf("#%d: Commit with expiry %v: %v", i, expiry, err)
		}
		e.want[tok] = data
		e.check(fmt.Sprintf("Commit with expiry %v", expiry))

		raw, err := e.c.Get(ctx, e.s.keys.prefix+tok)
		if err != nil || len(raw.Kvs) != 1 {
			t.Fatalf("#%d: get the key: %v, %v", i, raw, err)
		}
		ttl, err := e.c.TimeToLive(ctx, clientv3.LeaseID(raw.Kvs[0].Lease))
		if err != nil {
			t.Fatalf("#%d: TimeToLive: %v", i, err)
		}
		if need := int64(time.Until(expiry) / time.Second); ttl.GrantedTTL < need {
			t.Errorf("#%d: session that expires at %v is on a lease granted for %d s, want at least %d s", i, expiry.UTC(), ttl.GrantedTTL, need)
		}
	}
}

// TestHostilePrefixes runs stores on prefixes at the edges of the byte
// range, side by side on one etcd: prefixes of 0xff bytes (whose range
// has no end), prefixes ending in 0xff (whose range end is shorter than
// the prefix), NUL, and prefixes whose ranges touch. Each store lists
// and finds exactly its own sessions, and deletes them.
func TestHostilePrefixes(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	c := srv.Client(t)
	prefixes := []string{
		"\x00", "\x01", // [\x00, \x01) and [\x01, \x02) touch
		"a\xff", "b", // [a\xff, b) and [b, c) touch
		"p:", "p;",
		"\xfe\xff", // [\xfe\xff, \xff)
		"\xff\xff", // [\xff\xff, end of keyspace)
		"\xff\xfe\xff",
	}
	tokens := []string{"tok", "\x00", "\xff", "\xff\xff\xff", "p;"}
	stores := make([]*EtcdStore, len(prefixes))
	for i, p := range prefixes {
		stores[i] = NewWithPrefix(c, p)
		for _, tok := range tokens {
			if err := stores[i].Commit(tok, []byte(p+"|"+tok), hostileExpiry()); err != nil {
				t.Fatalf("prefix %q: Commit(%q): %v", p, tok, err)
			}
		}
	}
	for i, p := range prefixes {
		want := make(map[string][]byte)
		for _, tok := range tokens {
			want[tok] = []byte(p + "|" + tok)
		}
		hostileCheckStore(t, "the commits", fmt.Sprintf("store on %q", p), stores[i], want)
	}
	for i, p := range prefixes {
		for _, tok := range tokens {
			if err := stores[i].Delete(tok); err != nil {
				t.Fatalf("prefix %q: Delete(%q): %v", p, tok, err)
			}
		}
		hostileCheckStore(t, "the deletes", fmt.Sprintf("store on %q", p), stores[i], map[string][]byte{})
		for _, q := range stores[i+1:] {
			if all, err := q.All(); err != nil || len(all) != len(tokens) {
				t.Fatalf("deleting the sessions under %q left %d sessions under %q, %v; want %d", p, len(all), q.keys.prefix, err, len(tokens))
			}
		}
	}
}

// TestConstructorPanics: a nil client or an empty prefix is a
// programming error, reported by a panic that names the package.
func TestConstructorPanics(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		f    func()
	}{
		{"New(nil)", func() { New(nil) }},
		{`NewWithPrefix(nil, "p:")`, func() { NewWithPrefix(nil, "p:") }},
		{`NewWithPrefix(client, "")`, func() { NewWithPrefix(new(clientv3.Client), "") }},
		{`NewWithPrefix(nil, "")`, func() { NewWithPrefix(nil, "") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				r := recover()
				if msg := fmt.Sprint(r); r == nil || !strings.HasPrefix(msg, "etcdstore: ") {
					t.Errorf("%s panicked with %v, want a panic starting \"etcdstore: \"", tt.name, r)
				}
			}()
			tt.f()
		})
	}
}
