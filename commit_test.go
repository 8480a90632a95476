package etcdstore

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

func TestPlanCommit(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	expiry := now.Add(time.Hour)
	stored := tokenState{rev: 7, stored: true, expiry: expiry.Add(-time.Minute), data: "d", hasData: true}
	noData := stored
	noData.data, noData.hasData = "", false
	expired := stored
	expired.expiry = now.Add(-time.Second)
	for _, tc := range []struct {
		name  string
		seen  tokenState
		known bool
		touch time.Duration
		want  commitPlan
	}{
		{"unknown token", tokenState{}, false, 10 * time.Minute, commitWrite},
		{"seen ended: etcd says", tokenState{rev: 9}, true, 0, commitWrite},
		{"seen ended, touch on", tokenState{rev: 9}, true, 10 * time.Minute, commitWrite},
		{"seen stored, no touch interval", stored, true, 0, commitWrite},
		{"seen stored, expiry moves less than the interval", stored, true, 10 * time.Minute, commitTouch},
		{"seen stored, expiry moves more than the interval", stored, true, 30 * time.Second, commitWrite},
		{"seen stored without its data", noData, true, 10 * time.Minute, commitWrite},
		{"seen stored, expired", expired, true, 10 * time.Minute, commitWrite},
	} {
		if got := planCommit(tc.seen, tc.known, now, expiry, tc.touch); got != tc.want {
			t.Errorf("%s: planCommit = %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestAfterConflict(t *testing.T) {
	ours := encodeEnvelope(time.Unix(2_000_000_000, 0), []byte("ours"))
	theirs := &mvccpb.KeyValue{Value: []byte(encodeEnvelope(time.Unix(2_000_000_000, 0), []byte("theirs"))), ModRevision: 12}
	for _, tc := range []struct {
		name      string
		cur       *mvccpb.KeyValue
		uncertain bool
		want      conflict
	}{
		{"key gone", nil, false, conflictAbsent},
		{"key gone, after an attempt of unknown fate", nil, true, conflictAbsent},
		{"tombstone", &mvccpb.KeyValue{Value: []byte(tombstone), ModRevision: 11}, true, conflictDeleted},
		{"our own value", &mvccpb.KeyValue{Value: []byte(ours), ModRevision: 11}, true, conflictLanded},
		{"another commit's value", theirs, false, conflictOverwrite},
		{"another commit's value, after an attempt of unknown fate", theirs, true, conflictMaybeLanded},
		{"a legacy value", &mvccpb.KeyValue{Value: []byte("gob"), ModRevision: 3}, false, conflictOverwrite},
	} {
		if got := afterConflict(tc.cur, ours, tc.uncertain); got != tc.want {
			t.Errorf("%s: afterConflict = %d, want %d", tc.name, got, tc.want)
		}
	}
}

// TestTombstone: the tombstone is the envelope of no data that expired at
// the Unix epoch, so every reader, this release's or an earlier one's,
// sees no session, with or without the reason it carries as data;
// nothing a commit writes is one.
func TestTombstone(t *testing.T) {
	if want := encodeEnvelope(time.Unix(0, 0), nil); tombstone != want {
		t.Fatalf("tombstone = %q, want %q", tombstone, want)
	}
	if _, _, live, err := decodeStored([]byte(tombstone), time.Unix(0, 1)); live || err != nil {
		t.Fatalf("decodeStored(tombstone) = live %v, %v; want expired", live, err)
	}
	// With its reason: still the envelope of a session that expired at
	// the epoch, which every reader sees as none.
	at := time.Unix(1_800_000_000, 123)
	for r := EndUnknown; r <= endReasons; r++ {
		v := tombstoneOf(r, at)
		if !isTombstone([]byte(v)) || len(v) != tombstoneSize {
			t.Fatalf("tombstoneOf(%v) = %q: not a tombstone of %d bytes", r, v, tombstoneSize)
		}
		if _, _, live, err := decodeStored([]byte(v), time.Unix(0, 1)); live || err != nil {
			t.Fatalf("decodeStored(tombstoneOf(%v)) = live %v, %v; want expired", r, live, err)
		}
		if got, gotAt := tombstoneReason([]byte(v)); got != r || (r != EndUnknown && !gotAt.Equal(at)) {
			t.Errorf("tombstoneReason(tombstoneOf(%v, %v)) = %v, %v", r, at, got, gotAt)
		}
	}
	if r, at := tombstoneReason([]byte(tombstone)); r != EndUnknown || !at.IsZero() {
		t.Errorf("tombstoneReason of a tombstone without a reason = %v, %v", r, at)
	}
	if r, _ := tombstoneReason([]byte(tombstoneOf(endReasons+1, at))); r != EndUnknown {
		t.Errorf("tombstoneReason of a reason this release does not know = %v, want EndUnknown", r)
	}
	// A commit never writes an expiry at the epoch: it deletes a session
	// whose expiry has passed.
	for _, v := range []string{
		encodeEnvelope(time.Unix(0, 1), nil),
		encodeEnvelope(time.Unix(0, 1), []byte("x")),
		encodeEnvelope(time.Now().Add(time.Hour), nil),
		"", "\x00ES\x01",
	} {
		if isTombstone([]byte(v)) {
			t.Errorf("isTombstone(%q) = true", v)
		}
	}
}

// keyHistory writes values at key in turn through c and returns the
// revision of each write.
func keyHistory(t *testing.T, c *clientv3.Client, key string, values ...string) []int64 {
	t.Helper()
	var revs []int64
	for _, v := range values {
		resp, err := c.Put(ctxFor(t), key, v)
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, resp.Header.Revision)
	}
	return revs
}

func currentKV(t *testing.T, c *clientv3.Client, key string) *mvccpb.KeyValue {
	t.Helper()
	resp, err := c.Get(ctxFor(t), key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get %q: %v, %v", key, resp, err)
	}
	return resp.Kvs[0]
}

// TestLandedEarlier: the key's history tells whether a commit's value was
// written after the revision it was made against; a compacted history
// tells nothing.
func TestLandedEarlier(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t, etcdtest.Own()).Client(t) // it compacts
	s := NewWithPrefix(c, testPrefix(t))
	for _, tc := range []struct {
		name    string
		history []string // after the base version, "ours" marks the commit's value
		compact bool
		want    bool
	}{
		{"landed, then overwritten", []string{"ours", "theirs"}, false, true},
		{"landed, then overwritten twice", []string{"ours", "theirs", "again"}, false, true},
		{"never landed", []string{"theirs"}, false, false},
		{"never landed, two writes since", []string{"theirs", "again"}, false, false},
		{"landed before the base", nil, false, false},
		{"history compacted", []string{"ours", "theirs"}, true, false},
		{"a create that landed, then overwritten", []string{"ours", "theirs", "again"}, false, true},
		{"a create that never landed", []string{"theirs", "ours?", "again"}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := s.keys.prefix + t.Name()
			w := &pendingCommit{key: key, value: "ours"}
			switch {
			case strings.HasPrefix(tc.name, "a create"):
				// Made on the key's absence: rev 0.
			case tc.name == "landed before the base":
				w.rev = keyHistory(t, c, key, "ours", "base")[1]
			default:
				w.rev = keyHistory(t, c, key, "base")[0]
			}
			keyHistory(t, c, key, tc.history...)
			cur := currentKV(t, c, key)
			if tc.compact {
				if _, err := c.Compact(ctxFor(t), cur.ModRevision); err != nil {
					t.Fatal(err)
				}
			}
			got, err := s.landedEarlier(s.calls.newCall(context.Background()), w, cur)
			if err != nil || got != tc.want {
				t.Fatalf("landedEarlier = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// TestCommitOfUnknownFate: a commit whose compare fails on another
// commit's value writes over it, last writer wins, unless an attempt of
// its own had an unknown fate and the key's history shows that it landed
// before the other: it then took effect, and writing again would undo
// the other.
func TestCommitOfUnknownFate(t *testing.T) {
	t.Parallel()
	s, c := newStore(t)
	expiry := time.Now().Add(time.Hour)
	ours := encodeEnvelope(expiry, []byte("ours"))
	theirs := encodeEnvelope(expiry, []byte("theirs"))
	for _, tc := range []struct {
		name      string
		landed    bool // the history holds ours before theirs
		uncertain bool
		want      string
	}{
		{"another commit came first", false, false, ours},
		{"another came first, after an attempt of unknown fate", false, true, ours},
		{"ours landed, then another", true, true, theirs},
	} {
		t.Run(tc.name, func(t *testing.T) {
			token := t.Name()
			key := s.keys.prefix + token
			base := keyHistory(t, c, key, encodeEnvelope(expiry, []byte("base")))[0]
			if tc.landed {
				keyHistory(t, c, key, ours)
			}
			keyHistory(t, c, key, theirs)
			w := &pendingCommit{token: token, key: key, value: ours, now: time.Now(), expiry: expiry, rev: base, uncertain: tc.uncertain}
			conflicts := s.Stats().CommitConflicts
			if err := s.commit(s.calls.newCall(context.Background()), w); err != nil {
				t.Fatal(err)
			}
			if got := string(currentKV(t, c, key).Value); got != tc.want {
				t.Fatalf("key holds %q, want %q", got, tc.want)
			}
			if again := s.Stats().CommitConflicts > conflicts; again != (tc.want == ours) {
				t.Errorf("commit made again on the new revision: %v, want %v", again, tc.want == ours)
			}
		})
	}
}

// TestConcurrentCommitsLastWriterWins: two requests of one session, on two
// app servers, load it and commit: both succeed, the second commit's
// compare fails on the first's write and it writes again, so the session
// ends with the last one.
func TestConcurrentCommitsLastWriterWins(t *testing.T) {
	t.Parallel()
	a, c := newStore(t)
	b := NewWithPrefix(c, a.keys.prefix)
	expiry := time.Now().Add(time.Hour)
	if err := a.Commit("tok", []byte("v0"), expiry); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*EtcdStore{a, b} {
		if _, found, err := s.Find("tok"); err != nil || !found {
			t.Fatalf("Find = %v, %v", found, err)
		}
	}
	if err := a.Commit("tok", []byte("first"), expiry); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit("tok", []byte("second"), expiry); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := NewWithPrefix(c, a.keys.prefix).Find("tok"); string(got) != "second" {
		t.Fatalf("Find = %q, want the last commit's, second", got)
	}
	if got := b.Stats().CommitConflicts; got != 1 {
		t.Errorf("the second commit's CommitConflicts = %d, want 1", got)
	}
}
