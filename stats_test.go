package etcdstore

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/alexedwards/scs/v2"
)

// TestStats: each count moves with what it counts, and only with it;
// each method's latency histogram counts its calls.
func TestStats(t *testing.T) {
	t.Parallel()
	// Attempts of 12 s: a retry that a loaded machine caused would move
	// counts that the steps check exactly.
	s, c := newStore(t, WithTouchInterval(time.Minute), WithCodec(scs.GobCodec{}), WithTimeout(time.Minute))
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
		got := s.Stats()
		checkLatency(t, name, got)
		got.Latency = LatencyStats{}
		if got != want {
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
	step("a commit after a logout on another app server", want, func() {
		if err := NewWithPrefix(c, s.keys.prefix).Delete("a"); err != nil {
			t.Fatal(err)
		}
		if err := s.Commit("a", data("2"), expiry); err != nil {
			t.Fatal(err)
		}
	})
	// The tombstone's lease lasts the request bound: a bucket of its own.
	want.Deletes, want.LeaseGrants, want.Leases = 1, 2, 2
	step("a delete", want, func() {
		if err := s.Delete("a"); err != nil {
			t.Fatal(err)
		}
	})

	// Errors, by kind.
	want.Commits, want.Errors.Other = 4, 1
	step("a commit of a token over MaxTokenLen", want, func() {
		if err := s.Commit(string(make([]byte, MaxTokenLen+1)), []byte("x"), expiry); err == nil {
			t.Fatal("no error")
		}
	})
	want.Finds, want.Deletes = 2, 2
	step("a find and a delete of a token over MaxTokenLen", want, func() {
		if _, found, err := s.Find(string(make([]byte, MaxTokenLen+1))); found || err != nil {
			t.Fatal(found, err)
		}
		if err := s.Delete(string(make([]byte, MaxTokenLen+1))); err != nil {
			t.Fatal(err)
		}
	})
	want.FindsByPrincipal, want.DeletesByPrincipal, want.Errors.Other = 1, 1, 3
	step("the principal calls, without the index", want, func() {
		if _, err := s.FindByPrincipal(context.Background(), "ann"); err == nil {
			t.Fatal("no error")
		}
		if _, err := s.DeleteByPrincipal(context.Background(), "ann"); err == nil {
			t.Fatal("no error")
		}
	})
	want.Commits, want.CodecErrors, want.RememberedTokens = 6, 1, 2
	step("commits of data the codec cannot decode", want, func() {
		// One expiry, so one lease bucket: a second expiry could fall in
		// the next bucket and cost a grant.
		for _, b := range []string{"not gob", "not gob either"} {
			if err := s.Commit("junk", []byte(b), expiry); err != nil {
				t.Fatal(err)
			}
		}
	})
	want.Commits, want.Errors.TooLarge = 7, 1
	step("a commit too large", want, func() {
		if err := s.Commit("big", bytes.Repeat([]byte("x"), 3<<20), expiry); err == nil {
			t.Fatal("no error")
		}
	})
	want.Finds, want.Errors.Corrupt = 3, 1
	step("a find of a corrupt value", want, func() {
		if _, err := c.Put(ctxFor(t), s.keys.prefix+"bad", envelopeMagic); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Find("bad"); err == nil {
			t.Fatal("no error")
		}
	})
	want.Finds, want.Errors.Canceled = 4, 1
	step("a find with a canceled context", want, func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, _, err := s.FindCtx(ctx, "a"); err == nil {
			t.Fatal("no error")
		}
	})
}

// checkLatency fails the test unless each method's latency histogram
// counts as many calls as the method's count, with cumulative buckets.
func checkLatency(t *testing.T, after string, st Stats) {
	t.Helper()
	for _, m := range []struct {
		name  string
		calls int64
		h     Histogram
	}{
		{"Find", st.Finds, st.Latency.Find},
		{"Commit", st.Commits, st.Latency.Commit},
		{"Delete", st.Deletes, st.Latency.Delete},
		{"All", st.Alls, st.Latency.All},
		{"FindByPrincipal", st.FindsByPrincipal, st.Latency.FindByPrincipal},
		{"DeleteByPrincipal", st.DeletesByPrincipal, st.Latency.DeleteByPrincipal},
	} {
		if m.h.Count != uint64(m.calls) || (m.calls > 0) != (m.h.Sum > 0) {
			t.Errorf("after %s: %s latency counts %d calls taking %v, want %d", after, m.name, m.h.Count, m.h.Sum, m.calls)
		}
		for i := 1; i < len(m.h.Buckets); i++ {
			if m.h.Buckets[i] < m.h.Buckets[i-1] || m.h.Buckets[i] > m.h.Count {
				t.Errorf("after %s: %s latency buckets not cumulative: %v", after, m.name, m.h.Buckets)
				break
			}
		}
	}
}

// TestHistogram: durations land in the first bucket whose bound they do
// not exceed; those over the last bound count only in Count.
func TestHistogram(t *testing.T) {
	var h histogram
	for _, d := range []time.Duration{0, 500 * time.Microsecond, 501 * time.Microsecond, 3 * time.Millisecond, time.Minute} {
		h.observe(d)
	}
	got := h.read()
	if got.Count != 5 || got.Buckets[0] != 2 || got.Buckets[1] != 3 || got.Buckets[2] != 3 || got.Buckets[3] != 4 || got.Buckets[len(got.Buckets)-1] != 4 {
		t.Errorf("histogram %+v", got)
	}
	if want := 500*time.Microsecond + 501*time.Microsecond + 3*time.Millisecond + time.Minute; got.Sum != want {
		t.Errorf("sum %v, want %v", got.Sum, want)
	}
}
