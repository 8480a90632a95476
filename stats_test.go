package etcdstore

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/alexedwards/scs/v2"
)

// TestStats: each count moves with what it counts, and only with it.
func TestStats(t *testing.T) {
	t.Parallel()
	s, c := newStore(t, WithTouchInterval(time.Minute), WithCodec(scs.GobCodec{}))
	expiry := time.Now().Add(time.Hour)
	data := func(v string) []byte {
		b, err := scs.GobCodec{}.Encode(expiry, map[string]any{"v": v})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	step := func(name string, want Stats, do func()) {
		t.Helper()
		do()
		if got := s.Stats(); got != want {
			t.Fatalf("after %s:\n got %+v\nwant %+v", name, got, want)
		}
	}
	var want Stats
	want.Commits, want.LeaseGrants, want.Leases, want.RememberedTokens = 1, 1, 1, 1
	step("a commit", want, func() {
		if err := s.Commit("a", data("1"), expiry); err != nil {
			t.Fatal(err)
		}
	})
	want.Finds = 1
	step("a find", want, func() {
		if _, found, err := s.Find("a"); err != nil || !found {
			t.Fatal(found, err)
		}
	})
	want.Commits, want.TouchesSkipped = 2, 1
	step("a commit that only touches", want, func() {
		if err := s.Commit("a", data("1"), expiry.Add(time.Second)); err != nil {
			t.Fatal(err)
		}
	})
	want.Alls = 1
	step("an all", want, func() {
		if _, err := s.All(); err != nil {
			t.Fatal(err)
		}
	})
	want.Commits, want.ResurrectionsRefused = 3, 1
	step("a commit after a delete elsewhere", want, func() {
		if _, err := c.Delete(ctxFor(t), s.prefix+"a"); err != nil {
			t.Fatal(err)
		}
		if err := s.Commit("a", data("2"), expiry); err != nil {
			t.Fatal(err)
		}
	})
	want.Deletes = 1
	step("a delete", want, func() {
		if err := s.Delete("a"); err != nil {
			t.Fatal(err)
		}
	})

	// Errors, by kind.
	want.Commits, want.Errors.Other = 4, 1
	step("a commit of an empty token", want, func() {
		if err := s.Commit("", []byte("x"), expiry); err == nil {
			t.Fatal("no error")
		}
	})
	want.Commits, want.Errors.TooLarge = 5, 1
	step("a commit too large", want, func() {
		if err := s.Commit("big", bytes.Repeat([]byte("x"), 3<<20), expiry); err == nil {
			t.Fatal("no error")
		}
	})
	want.Finds, want.Errors.Corrupt = 2, 1
	step("a find of a corrupt value", want, func() {
		if _, err := c.Put(ctxFor(t), s.prefix+"bad", envelopeMagic); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Find("bad"); err == nil {
			t.Fatal("no error")
		}
	})
	want.Finds, want.Errors.Canceled = 3, 1
	step("a find with a canceled context", want, func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, _, err := s.FindCtx(ctx, "a"); err == nil {
			t.Fatal("no error")
		}
	})
}
