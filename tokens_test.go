package etcdstore

import (
	"fmt"
	"testing"
	"time"
)

func TestTouchable(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	const d = 10 * time.Minute
	stored := now.Add(15 * time.Minute)
	for i, tt := range []struct {
		name   string
		stored time.Time
		expiry time.Time
		d      time.Duration
		want   bool
	}{
		{"same expiry", stored, stored, d, true},
		{"pushed back by less than d", stored, stored.Add(d - time.Nanosecond), d, true},
		{"pushed back by d", stored, stored.Add(d), d, false},
		{"pushed back by more than d", stored, stored.Add(time.Hour), d, false},
		{"brought forward", stored, stored.Add(-time.Nanosecond), d, false},
		{"stored expiry passed", now.Add(-time.Second), now.Add(time.Second), d, false},
		{"stored expiry is now", now, now.Add(time.Second), d, false},
		{"legacy value: no stored expiry", time.Time{}, stored, d, false},
		{"interval off", stored, stored, 0, false},
		{"negative interval", stored, stored, -d, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := touchable(now, tt.stored, tt.expiry, tt.d); got != tt.want {
				t.Errorf("#%d: touchable(now, now%+v, now%+v, %v) = %v, want %v",
					i, tt.stored.Sub(now), tt.expiry.Sub(now), tt.d, got, tt.want)
			}
		})
	}
}

func TestMemoryOrdersByRevision(t *testing.T) {
	m := newTokenMemory(10)
	expiry := time.Now().Add(time.Hour)
	at := func(rev int64, data string) tokenState {
		return tokenState{rev: rev, stored: true, expiry: expiry, data: data, hasData: true}
	}
	m.record("tok", at(5, "five"))
	m.record("tok", at(3, "three")) // a slow Find that read before
	if got, _ := m.last("tok"); got.data != "five" {
		t.Fatalf("after an older tokenState: data %q, want the later %q", got.data, "five")
	}
	m.recordGone("tok", 4)
	if got, _ := m.last("tok"); !got.stored {
		t.Fatal("an older delete made the session gone")
	}
	m.record("tok", tokenState{rev: 5, stored: true, expiry: expiry}) // All: no data
	if got, _ := m.last("tok"); !got.hasData || got.data != "five" {
		t.Fatalf("a tokenState of the same revision without data dropped it: %+v", got)
	}
	m.recordGone("tok", 6)
	got, ok := m.last("tok")
	if !ok || got.stored || got.hasData || got.rev != 6 {
		t.Fatalf("after a delete: %+v, %v; want remembered, not live, no data, rev 6", got, ok)
	}
	m.record("tok", at(7, "seven"))
	if got, _ := m.last("tok"); !got.stored || got.data != "seven" {
		t.Fatalf("after a later write: %+v", got)
	}
}

func TestMemorySawGoneAddsNothing(t *testing.T) {
	m := newTokenMemory(10)
	m.recordGone("never", 1)
	if _, ok := m.last("never"); ok || m.len() != 0 {
		t.Fatalf("a delete of an unknown token was remembered: len %d", m.len())
	}
}

func TestMemoryKeepsAlt(t *testing.T) {
	m := newTokenMemory(10)
	at := func(rev int64, data string) tokenState {
		return tokenState{rev: rev, stored: true, data: data, hasData: true}
	}
	m.record("tok", at(1, "ab"))
	m.recordAlt("tok", 1, "ba")
	m.record("tok", at(2, "ab")) // the same bytes again
	if got, _ := m.last("tok"); got.alt != "ba" {
		t.Fatalf("the same data again: alt %q, want %q", got.alt, "ba")
	}
	m.record("tok", at(3, "ba")) // written in the other order
	if got, _ := m.last("tok"); got.data != "ba" || got.alt != "ab" {
		t.Fatalf("data in the alternative's bytes: data %q alt %q, want %q and %q", got.data, got.alt, "ba", "ab")
	}
	m.recordAlt("tok", 2, "stale")
	if got, _ := m.last("tok"); got.alt != "ab" {
		t.Fatalf("sawAlt for an older revision replaced alt: %q", got.alt)
	}
	m.record("tok", at(4, "cd")) // changed
	if got, _ := m.last("tok"); got.alt != "" {
		t.Fatalf("new data kept the old alternative %q", got.alt)
	}
}

func TestMemoryBound(t *testing.T) {
	const max = 3
	m := newTokenMemory(max)
	for i := range 5 {
		m.record(fmt.Sprint("tok", i), tokenState{rev: int64(i + 1), stored: true})
		if i == 2 {
			m.last("tok0") // used again: now the most recent
		}
	}
	if m.len() != max {
		t.Fatalf("len %d, want the bound %d", m.len(), max)
	}
	for tok, want := range map[string]bool{"tok0": true, "tok1": false, "tok2": false, "tok3": true, "tok4": true} {
		if _, ok := m.last(tok); ok != want {
			t.Errorf("%s remembered = %v, want %v", tok, ok, want)
		}
	}
}
