package etcdstore

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

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
