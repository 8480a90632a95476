package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alexedwards/scs/v2"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// userData is what SCS's GobCodec writes for a session of user (none when
// user is nil) that also holds a message.
func userData(t *testing.T, user any, message string) []byte {
	t.Helper()
	values := map[string]any{"message": message}
	if user != nil {
		values["user"] = user
	}
	b, err := scs.GobCodec{}.Encode(time.Now().Add(time.Hour), values)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// entryOf is the key of the index entry of principal and token in s, a
// store without encryption.
func entryOf(s *EtcdStore, principal, token string) string {
	e, _ := s.index.entry(0, principal, token)
	return e
}

// indexKeys returns the index entries of the store's principal index, as
// etcd holds them.
func indexKeys(t *testing.T, c *clientv3.Client, s *EtcdStore) []string {
	t.Helper()
	return etcdtest.Keys(t, c, s.index.prefix)
}

// TestPrincipalIndexPrefix: index ranges lie outside every session range
// and apart whenever the session prefixes are apart.
func TestPrincipalIndexPrefix(t *testing.T) {
	prefixes := []string{"scs:session:", "app:", "app;", "app:user:", "app:admin:", "1:", "12:", "a/", "a", "\xff", "\x00"}
	clash := func(a, b string) bool { return strings.HasPrefix(a, b) || strings.HasPrefix(b, a) }
	for _, p := range prefixes {
		for _, q := range prefixes {
			if p != q && !clash(p, q) && clash(PrincipalIndexPrefix(p), PrincipalIndexPrefix(q)) {
				t.Errorf("index ranges of %q and %q clash: %q, %q", p, q, PrincipalIndexPrefix(p), PrincipalIndexPrefix(q))
			}
		}
		if clash(PrincipalIndexPrefix(p), p) {
			t.Errorf("index range of %q, %q, clashes with its sessions", p, PrincipalIndexPrefix(p))
		}
	}
}

// TestFindByPrincipal: exactly the live sessions of a principal, whatever
// the principal's type; an empty map for none; an error without the
// option.
func TestFindByPrincipal(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, WithPrincipal("user"))
	expiry := time.Now().Add(time.Hour)
	commit := func(token string, data []byte, expiry time.Time) {
		t.Helper()
		if err := s.Commit(token, data, expiry); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		commit(fmt.Sprint("ann", i), userData(t, "ann", fmt.Sprint(i)), expiry)
	}
	commit("bob", userData(t, "bob", ""), expiry)
	commit("anon", userData(t, nil, ""), expiry)
	commit("id", userData(t, 42, ""), expiry)
	commit("empty", userData(t, "", ""), expiry)
	soon := time.Now().Add(300 * time.Millisecond)
	commit("soon", userData(t, "ann", "soon"), soon)
	time.Sleep(time.Until(soon)) // past its expiry, long before its lease ends

	got, err := s.FindByPrincipal(ctxFor(t), "ann")
	if err != nil {
		t.Fatal(err)
	}
	if keys := slices.Sorted(maps.Keys(got)); !slices.Equal(keys, []string{"ann0", "ann1", "ann2"}) {
		t.Errorf("FindByPrincipal(ann) = %q, want ann0 to ann2 (soon has expired)", keys)
	}
	if _, values, err := (scs.GobCodec{}).Decode(got["ann1"]); err != nil || values["message"] != "1" {
		t.Errorf("FindByPrincipal(ann)[ann1] decodes to %v, %v; want its message", values, err)
	}
	if got, err := s.FindByPrincipal(ctxFor(t), "42"); err != nil || len(got) != 1 || got["id"] == nil {
		t.Errorf(`FindByPrincipal("42") = %v, %v; want the session of user 42`, got, err)
	}
	if got, err := s.FindByPrincipal(ctxFor(t), "nobody"); err != nil || got == nil || len(got) != 0 {
		t.Errorf("FindByPrincipal(nobody) = %v, %v; want an empty map", got, err)
	}
	if got, err := s.FindByPrincipal(ctxFor(t), ""); err != nil || len(got) != 0 {
		t.Errorf(`FindByPrincipal("") = %v, %v; want an empty map: an empty name is no principal`, got, err)
	}

	plain := NewWithPrefix(s.client, s.keys.prefix)
	if _, err := plain.FindByPrincipal(ctxFor(t), "ann"); !errors.Is(err, ErrNoPrincipal) || !strings.Contains(err.Error(), "WithPrincipal") {
		t.Errorf("FindByPrincipal without WithPrincipal = %v, want an error naming the option", err)
	}
	if _, err := plain.DeleteByPrincipal(ctxFor(t), "ann"); !errors.Is(err, ErrNoPrincipal) || !strings.Contains(err.Error(), "WithPrincipal") {
		t.Errorf("DeleteByPrincipal without WithPrincipal = %v, want an error naming the option", err)
	}
}

// TestPrincipalIndexFollowsTheSession: a change of principal on one token
// moves its entry in the commit's Txn, a session that loses its principal
// loses its entry, a delete removes it, and each entry is on its
// session's lease.
func TestPrincipalIndexFollowsTheSession(t *testing.T) {
	t.Parallel()
	s, c := newStore(t, WithPrincipal("user"))
	expiry := time.Now().Add(time.Hour)
	if err := s.Commit("tok", userData(t, "ann", ""), expiry); err != nil {
		t.Fatal(err)
	}
	if keys := indexKeys(t, c, s); !slices.Equal(keys, []string{entryOf(s, "ann", "tok")}) {
		t.Fatalf("after a commit as ann: index %q", keys)
	}
	resp, err := c.Get(ctxFor(t), entryOf(s, "ann", "tok"))
	if err != nil || len(resp.Kvs) != 1 || clientv3.LeaseID(resp.Kvs[0].Lease) != rawValue(t, c, s, "tok").lease {
		t.Fatalf("index entry %v, %v: want it on the session's lease", resp, err)
	}

	// Another store, which reads the session first, logs in as bob on
	// the same token.
	other := NewWithPrefix(s.client, s.keys.prefix, WithPrincipal("user"))
	if _, found, err := other.Find("tok"); err != nil || !found {
		t.Fatal(found, err)
	}
	if err := other.Commit("tok", userData(t, "bob", ""), expiry); err != nil {
		t.Fatal(err)
	}
	if keys := indexKeys(t, c, s); !slices.Equal(keys, []string{entryOf(s, "bob", "tok")}) {
		t.Fatalf("after a login as bob on the same token: index %q, want bob's entry only", keys)
	}
	if got, _ := s.FindByPrincipal(ctxFor(t), "ann"); len(got) != 0 {
		t.Errorf("ann after the token went to bob: %v", got)
	}

	if err := other.Commit("tok", userData(t, nil, ""), expiry); err != nil {
		t.Fatal(err)
	}
	if keys := indexKeys(t, c, s); len(keys) != 0 {
		t.Fatalf("after the principal left the session: index %q, want none", keys)
	}

	if err := other.Commit("tok", userData(t, "bob", ""), expiry); err != nil {
		t.Fatal(err)
	}
	if err := other.Delete("tok"); err != nil {
		t.Fatal(err)
	}
	if keys := indexKeys(t, c, s); len(keys) != 0 {
		t.Fatalf("after a delete: index %q, want none", keys)
	}
}

// TestStalePrincipalEntries: an entry whose session was deleted behind
// the store's back, or now names another principal, yields nothing, and
// DeleteByPrincipal removes it without counting it or touching the other
// principal's session.
func TestStalePrincipalEntries(t *testing.T) {
	t.Parallel()
	s, c := newStore(t, WithPrincipal("user"))
	expiry := time.Now().Add(time.Hour)
	for _, tok := range []string{"gone", "moved", "kept"} {
		if err := s.Commit(tok, userData(t, "ann", ""), expiry); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Delete(ctxFor(t), s.keys.prefix+"gone"); err != nil {
		t.Fatal(err)
	}
	// A store that never saw "moved" gives it to bob: it cannot know to
	// remove ann's entry.
	blind := NewWithPrefix(s.client, s.keys.prefix, WithPrincipal("user"))
	if err := blind.Commit("moved", userData(t, "bob", ""), expiry); err != nil {
		t.Fatal(err)
	}
	if got, err := s.FindByPrincipal(ctxFor(t), "ann"); err != nil || len(got) != 1 || got["kept"] == nil {
		t.Fatalf("FindByPrincipal(ann) = %v, %v; want kept only", slices.Collect(maps.Keys(got)), err)
	}
	n, err := s.DeleteByPrincipal(ctxFor(t), "ann")
	if err != nil || n != 1 {
		t.Fatalf("DeleteByPrincipal(ann) = %d, %v; want 1", n, err)
	}
	if keys := indexKeys(t, c, s); !slices.Equal(keys, []string{entryOf(s, "bob", "moved")}) {
		t.Errorf("index after DeleteByPrincipal(ann): %q, want bob's entry only", keys)
	}
	if got, err := s.FindByPrincipal(ctxFor(t), "bob"); err != nil || len(got) != 1 {
		t.Errorf("bob's session after DeleteByPrincipal(ann): %v, %v", got, err)
	}
}

// TestDeleteByPrincipalMany: more sessions than one Txn may hold are all
// deleted, but the ones kept.
func TestDeleteByPrincipalMany(t *testing.T) {
	t.Parallel()
	s, c := newStore(t, WithPrincipal("user"))
	expiry := time.Now().Add(time.Hour)
	const n = 150 // over etcd's --max-txn-ops, 128
	for i := range n {
		if err := s.Commit(fmt.Sprintf("t%03d", i), userData(t, "ann", ""), expiry); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Commit("bob", userData(t, "bob", ""), expiry); err != nil {
		t.Fatal(err)
	}
	deleted, err := s.DeleteByPrincipal(ctxFor(t), "ann", "t007", "not-a-session")
	if err != nil || deleted != n-1 {
		t.Fatalf("DeleteByPrincipal = %d, %v; want %d", deleted, err, n-1)
	}
	all, err := s.All()
	if err != nil {
		t.Fatal(err)
	}
	if keys := slices.Sorted(maps.Keys(all)); !slices.Equal(keys, []string{"bob", "t007"}) {
		t.Errorf("sessions left: %q, want bob and the kept t007", keys)
	}
	if keys := indexKeys(t, c, s); len(keys) != 2 {
		t.Errorf("index left: %q, want two entries", keys)
	}
}

// TestHostilePrincipals: any principal makes an entry of fixed size in
// the store's index range, found again by its own name only.
func TestHostilePrincipals(t *testing.T) {
	t.Parallel()
	s, c := newStore(t, WithPrincipal("user"))
	expiry := time.Now().Add(time.Hour)
	hostile := []string{"a/b", "../../x", "\x00", "\xff\xfe", "\xc3\x28", strings.Repeat("x", 1<<20), s.keys.prefix, PrincipalIndexRoot}
	for i, p := range hostile {
		if err := s.Commit(fmt.Sprint("h", i), userData(t, p, ""), expiry); err != nil {
			t.Fatalf("#%d: %v", i, err)
		}
	}
	for _, key := range indexKeys(t, c, s) {
		if rest := strings.TrimPrefix(key, s.index.prefix); len(rest) != 32+1+2 {
			t.Errorf("index key %q: %d bytes after the range, want a 32-digit hash, '/' and the token", key, len(rest))
		}
	}
	for i, p := range hostile {
		got, err := s.FindByPrincipal(ctxFor(t), p)
		if err != nil || len(got) != 1 || got[fmt.Sprint("h", i)] == nil {
			t.Errorf("#%d: FindByPrincipal = %d sessions, %v; want its own", i, len(got), err)
		}
	}
	if got, _ := s.All(); len(got) != len(hostile) {
		t.Errorf("All = %d sessions, want %d: the index is not in the session range", len(got), len(hostile))
	}
}

// TestPrincipalEntryExpires: the entry goes with its session's lease, the
// request bound after the session's expiry.
func TestPrincipalEntryExpires(t *testing.T) {
	t.Parallel()
	s, c := newStore(t, WithPrincipal("user"), WithMaxRequestDuration(time.Second))
	if err := s.Commit("short", userData(t, "ann", ""), time.Now().Add(500*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for len(indexKeys(t, c, s)) > 0 || rawValue(t, c, s, "short") != nil {
		select {
		case <-ctx.Done():
			t.Fatalf("10 s after a 500 ms session: index %q", indexKeys(t, c, s))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TestPrincipalIndexAfterChangeElsewhere: a store whose memory of a
// token's principal is out of date, because another store moved the
// token to another principal, still leaves the session indexed under the
// principal it writes.
func TestPrincipalIndexAfterChangeElsewhere(t *testing.T) {
	t.Parallel()
	a, _ := newStore(t, WithPrincipal("user"))
	b := NewWithPrefix(a.client, a.keys.prefix, WithPrincipal("user"))
	expiry := time.Now().Add(time.Hour)
	if err := a.Commit("tok", userData(t, "ann", ""), expiry); err != nil {
		t.Fatal(err)
	}
	if _, found, err := b.Find("tok"); err != nil || !found {
		t.Fatal(found, err)
	}
	if err := b.Commit("tok", userData(t, "bob", ""), expiry); err != nil {
		t.Fatal(err)
	}
	// a still remembers ann, with her entry on the lease it would use.
	if err := a.Commit("tok", userData(t, "ann", ""), expiry); err != nil {
		t.Fatal(err)
	}
	if got, err := a.FindByPrincipal(ctxFor(t), "ann"); err != nil || len(got) != 1 {
		t.Errorf("FindByPrincipal(ann) after a wrote ann over bob = %d sessions, %v; want the session", len(got), err)
	}
	if got, err := a.FindByPrincipal(ctxFor(t), "bob"); err != nil || len(got) != 0 {
		t.Errorf("FindByPrincipal(bob) = %d sessions, %v; want none", len(got), err)
	}
}

// countingCodec is SCS's GobCodec, counting its decodes.
type countingCodec struct {
	scs.GobCodec
	decodes *atomic.Int64
}

func (c countingCodec) Decode(b []byte) (time.Time, map[string]any, error) {
	c.decodes.Add(1)
	return c.GobCodec.Decode(b)
}

// TestPrincipalDecodedOncePerChange: finds and commits of a session whose
// bytes did not change do not decode it again for its principal.
func TestPrincipalDecodedOncePerChange(t *testing.T) {
	t.Parallel()
	var decodes atomic.Int64
	s, _ := newStore(t, WithPrincipal("user"), WithCodec(countingCodec{decodes: &decodes}))
	expiry := time.Now().Add(time.Hour)
	data := userData(t, "ann", "")
	for range 5 {
		if err := s.Commit("tok", data, expiry); err != nil {
			t.Fatal(err)
		}
		if _, found, err := s.Find("tok"); err != nil || !found {
			t.Fatal(found, err)
		}
	}
	if n := decodes.Load(); n != 1 {
		t.Errorf("5 commits and finds of the same bytes decoded %d times, want 1", n)
	}
	if err := s.Commit("tok", userData(t, "bob", ""), expiry); err != nil {
		t.Fatal(err)
	}
	if n := decodes.Load(); n != 2 {
		t.Errorf("a changed session: %d decodes in all, want 2", n)
	}
	if got, _ := s.FindByPrincipal(ctxFor(t), "bob"); len(got) != 1 {
		t.Errorf("FindByPrincipal(bob) = %d sessions after the change, want 1", len(got))
	}
}

// TestPlanDeletesTwoEntries: a token with two entries, one under the
// hash of the key that sealed its session and one stale (left under
// another key's), is buried once, guarded by the first, and the stale
// entry goes under its own compare: no key is written twice in the Txn.
// It does no I/O.
func TestPlanDeletesTwoEntries(t *testing.T) {
	entries := []indexEntry{
		{key: "i/clear/t", token: "t", rev: 5, created: 4},
		{key: "i/k1/t", token: "t", rev: 9, created: 8, id: 1},
	}
	live := map[string]bool{"i/k1/t": true}
	batches := planDeletes(entries, live, nil, func(token string) string { return "s/" + token }, func() clientv3.LeaseID { return 1 }, tombstone)
	if len(batches) != 1 || len(batches[0].tokens) != 1 || len(batches[0].ops) != 3 || len(batches[0].cmps) != 2 {
		t.Fatalf("batches %+v: want one Txn burying t once, deleting both entries", batches)
	}
	found := false
	for _, c := range batches[0].cmps {
		pc := pbCompare(c)
		found = found || (string(pc.Key) == "i/k1/t" && pc.GetCreateRevision() == 8)
	}
	if !found {
		t.Errorf("compares %v: the bury is not guarded by the live entry", batches[0].cmps)
	}
}

// TestPlanDeletes: DeleteByPrincipal's Txns, by table: a session goes
// with its entry under one compare, its tombstone on a lease of its own asking, a stale entry alone under one, kept
// tokens not at all, and no Txn holds more than etcd's default
// --max-txn-ops of operations or compares.
func TestPlanDeletes(t *testing.T) {
	key := func(token string) string { return "p:" + token }
	entry := func(token string, rev int64) indexEntry {
		return indexEntry{key: "i/" + token, token: token, rev: rev, created: rev - 1}
	}
	for _, tc := range []struct {
		name              string
		live, stale, kept int
		wantTxns          int
		wantTokens        int
	}{
		{"none", 0, 0, 0, 0, 0},
		{"one live", 1, 0, 0, 1, 1},
		{"one stale", 0, 1, 0, 1, 0},
		{"kept", 1, 0, 2, 1, 1},
		{"64 live fit one Txn", 64, 0, 0, 1, 64},
		{"65 live need two", 65, 0, 0, 2, 65},
		{"200 stale", 0, 200, 0, 2, 0},
		{"mixed", 100, 50, 3, 2, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var entries []indexEntry
			live, keep := map[string]bool{}, map[string]bool{}
			for i := range tc.live + tc.stale + tc.kept {
				tok := fmt.Sprint("t", i)
				entries = append(entries, entry(tok, int64(10+i)))
				switch {
				case i < tc.live:
					live["i/"+tok] = true
				case i < tc.live+tc.stale:
				default:
					live["i/"+tok], keep[tok] = true, true
				}
			}
			leases := 0
			batches := planDeletes(entries, live, keep, key, func() clientv3.LeaseID { leases++; return clientv3.LeaseID(leases) }, tombstone)
			tokens, ops, cmps := 0, 0, 0
			for i, b := range batches {
				if len(b.ops) > maxTxnOps || len(b.cmps) > maxTxnOps {
					t.Errorf("Txn %d: %d ops, %d compares; etcd allows %d", i, len(b.ops), len(b.cmps), maxTxnOps)
				}
				tokens, ops, cmps = tokens+len(b.tokens), ops+len(b.ops), cmps+len(b.cmps)
				for _, tok := range b.tokens {
					if keep[tok] || !live["i/"+tok] {
						t.Errorf("Txn %d deletes %q", i, tok)
					}
				}
			}
			if len(batches) != tc.wantTxns || tokens != tc.wantTokens {
				t.Errorf("%d Txns deleting %d sessions, want %d and %d", len(batches), tokens, tc.wantTxns, tc.wantTokens)
			}
			if ops != 2*tc.live+tc.stale || cmps != tc.live+tc.stale {
				t.Errorf("%d ops and %d compares, want %d and %d", ops, cmps, 2*tc.live+tc.stale, tc.live+tc.stale)
			}
			if leases != tc.live {
				t.Errorf("%d tombstone leases asked for, want one per session ended, %d", leases, tc.live)
			}
		})
	}
}
