package etcdstore

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// The checker of TestModel (model_test.go): a history of Finds, Commits,
// Deletes and DeleteByPrincipals against the model in that file's
// documentation. It does no I/O, and TestModelChecker tests it on
// hand-made histories.

// mKind is what an operation of the history was.
type mKind byte

const (
	mFind mKind = iota
	mCommit
	mDelete
	mDeleteByPrincipal
)

// mOp is one operation of the history, with its wall-clock call and
// return times (one process, one clock).
type mOp struct {
	kind   mKind
	server int // the app server it ran on
	req    int // the scenario it was part of, for traces
	token  string
	// principal is the one a commit's data names, or the one a
	// DeleteByPrincipal ends; except are that call's kept tokens.
	principal string
	except    []string
	// value is a commit's (unique in the history) or what a find found.
	value string
	found bool
	// expiry is a commit's; loaded is when its request's Find was called
	// (a login's: its own call).
	expiry, loaded time.Time
	call, ret      time.Time
	err            error
}

// logoutCommit reports whether op is a commit that ends its session: one
// whose expiry was not after its call.
func (op *mOp) logoutCommit() bool {
	return op.kind == mCommit && !op.expiry.After(op.call)
}

// mViolation is a part of the model a history breaks, and the token whose
// operations show it.
type mViolation struct {
	token string
	at    time.Time // the call of the find that shows it
	kind  string    // which part of the model, in a few words
	what  string
}

// mHistory indexes a history by token.
type mHistory struct {
	ops        []mOp
	byToken    map[string][]int // finds, commits and deletes
	dbps       []int
	principals map[string]map[string]time.Time // token -> principals its commits named -> first such call
	byValue    map[string]int                  // commit value -> op
	base       time.Time
}

func newMHistory(ops []mOp) *mHistory {
	h := &mHistory{ops: ops, byToken: map[string][]int{}, principals: map[string]map[string]time.Time{}, byValue: map[string]int{}}
	for i, op := range ops {
		if h.base.IsZero() || op.call.Before(h.base) {
			h.base = op.call
		}
		if op.kind == mDeleteByPrincipal {
			h.dbps = append(h.dbps, i)
			continue
		}
		h.byToken[op.token] = append(h.byToken[op.token], i)
		if op.kind == mCommit {
			h.byValue[op.token+"\x00"+op.value] = i
			if h.principals[op.token] == nil {
				h.principals[op.token] = map[string]time.Time{}
			}
			if first, ok := h.principals[op.token][op.principal]; !ok || op.call.Before(first) {
				h.principals[op.token][op.principal] = op.call
			}
		}
	}
	return h
}

// ends reports whether op is a logout of token (whatever its outcome):
// a Delete of it, a commit of it with a past expiry, or a
// DeleteByPrincipal of a principal one of its commits named, that does
// not keep it and returned after that commit was called.
func (h *mHistory) ends(op *mOp, token string) bool {
	switch op.kind {
	case mDelete:
		return op.token == token
	case mCommit:
		return op.token == token && op.logoutCommit()
	case mDeleteByPrincipal:
		first, ok := h.principals[token][op.principal]
		return ok && op.ret.After(first) && !slices.Contains(op.except, token)
	}
	return false
}

// endedBy reports whether op is a logout of token that the model holds
// to: it returned nil, and, for a DeleteByPrincipal, a commit of token
// naming its principal was acknowledged before it was called.
func (h *mHistory) endedBy(op *mOp, token string) bool {
	if op.err != nil || !h.ends(op, token) {
		return false
	}
	if op.kind != mDeleteByPrincipal {
		return true
	}
	for _, i := range h.byToken[token] {
		c := &h.ops[i]
		if c.kind == mCommit && c.err == nil && !c.logoutCommit() && c.principal == op.principal && c.ret.Before(op.call) {
			return true
		}
	}
	return false
}

// logouts returns the operations that are logouts of token.
func (h *mHistory) logouts(token string) []int {
	var out []int
	for _, i := range append(slices.Clone(h.byToken[token]), h.dbps...) {
		if h.ends(&h.ops[i], token) {
			out = append(out, i)
		}
	}
	return out
}

// checkModel returns the violations of the model in ops: finds that see a
// session a logout ended, a value past its expiry or one never committed,
// and acknowledged commits that a later find misses or reads older than.
// A request whose commit returned bound or more after its Find was called
// is outside the model: its commit may bring a session back. margin is the
// tolerance on expiries (a commit must be found until margin before its
// expiry). Errored finds are ignored; an errored commit may take effect at
// any time after its call, or never.
func checkModel(ops []mOp, bound, margin time.Duration) []mViolation {
	h := newMHistory(ops)
	var out []mViolation
	for i := range h.ops {
		f := &h.ops[i]
		if f.kind != mFind || f.err != nil {
			continue
		}
		if kind, what := h.checkFind(f, bound, margin); what != "" {
			out = append(out, mViolation{token: f.token, at: f.call, kind: kind, what: what})
		}
	}
	slices.SortFunc(out, func(a, b mViolation) int { return a.at.Compare(b.at) })
	return out
}

// checkFind returns which part of the model find f breaks and how, or
// "".
func (h *mHistory) checkFind(f *mOp, bound, margin time.Duration) (kind, what string) {
	logouts := h.logouts(f.token)
	if f.found {
		i, ok := h.byValue[f.token+"\x00"+f.value]
		if !ok || !h.ops[i].call.Before(f.ret) {
			return "a value never committed", fmt.Sprintf("find %s at %s found %q, which no commit of %s called before it returned wrote", f.token, h.at(f.call), f.value, f.token)
		}
		c := &h.ops[i]
		if !c.expiry.After(f.call) {
			return "an expired value", fmt.Sprintf("find %s at %s found %q, which expired at %s", f.token, h.at(f.call), f.value, h.at(c.expiry))
		}
		for _, j := range logouts {
			l := &h.ops[j]
			if h.endedBy(l, f.token) && l.ret.Before(f.call) && c.loaded.Before(l.ret) && c.ret.Sub(c.loaded) < bound {
				return "found after " + logoutKind(l), fmt.Sprintf("find %s at %s found %q, committed by a request that loaded it at %s, after %s returned at %s",
					f.token, h.at(f.call), f.value, h.at(c.loaded), h.describe(l), h.at(l.ret))
			}
		}
	}
	for _, j := range logouts {
		if h.ops[j].call.Before(f.ret) {
			return "", "" // a logout may have ended the session before f
		}
	}
	// The latest acknowledged commit f must see, or a later one.
	var acked []int
	for _, i := range h.byToken[f.token] {
		c := &h.ops[i]
		if c.kind == mCommit && c.err == nil && !c.logoutCommit() && c.ret.Before(f.call) && f.ret.Before(c.expiry.Add(-margin)) {
			acked = append(acked, i)
		}
	}
	for _, i := range acked {
		c := &h.ops[i]
		seen, expired := f.found && f.value == c.value, false
		for _, j := range h.byToken[f.token] {
			w := &h.ops[j]
			if j == i || w.kind != mCommit || !w.call.Before(f.ret) || (w.err == nil && w.ret.Before(c.call)) {
				continue
			}
			seen = seen || (f.found && f.value == w.value)
			expired = expired || w.expiry.Before(f.ret.Add(margin))
		}
		switch {
		case f.found && !seen:
			return "a stale value", fmt.Sprintf("find %s at %s found %q, older than %q, acknowledged at %s", f.token, h.at(f.call), f.value, c.value, h.at(c.ret))
		case !f.found && !expired:
			return "an acknowledged commit lost", fmt.Sprintf("find %s at %s found nothing, though the commit of %q (expiring at %s) was acknowledged at %s, and no logout of it was called",
				f.token, h.at(f.call), c.value, h.at(c.expiry), h.at(c.ret))
		}
	}
	return "", ""
}

// logoutKind names the kind of logout op.
func logoutKind(op *mOp) string {
	switch op.kind {
	case mDelete:
		return "Delete"
	case mDeleteByPrincipal:
		return "DeleteByPrincipal"
	default:
		return "a Commit in the past"
	}
}

// at is t relative to the history's first call.
func (h *mHistory) at(t time.Time) string {
	return fmt.Sprintf("%+.3fs", t.Sub(h.base).Seconds())
}

// describe is op in a trace.
func (h *mHistory) describe(op *mOp) string {
	switch op.kind {
	case mFind:
		return fmt.Sprintf("find %s", op.token)
	case mCommit:
		return fmt.Sprintf("commit %s %q (user %s, expires %s, loaded %s)", op.token, op.value, op.principal, h.at(op.expiry), h.at(op.loaded))
	case mDelete:
		return fmt.Sprintf("delete %s", op.token)
	default:
		return fmt.Sprintf("deleteByPrincipal %s except %q", op.principal, op.except)
	}
}

// trace is the operations on token, and the DeleteByPrincipals of its
// principals, one a line in call order.
func (h *mHistory) trace(token string) string {
	idx := slices.Clone(h.byToken[token])
	for _, i := range h.dbps {
		if h.ends(&h.ops[i], token) || slices.Contains(h.ops[i].except, token) {
			idx = append(idx, i)
		}
	}
	slices.SortFunc(idx, func(a, b int) int { return h.ops[a].call.Compare(h.ops[b].call) })
	var b strings.Builder
	for _, i := range idx {
		op := &h.ops[i]
		result := "ok"
		switch {
		case op.err != nil:
			result = "error: " + op.err.Error()
		case op.kind == mFind && op.found:
			result = fmt.Sprintf("found %q", op.value)
		case op.kind == mFind:
			result = "not found"
		}
		fmt.Fprintf(&b, "\t%s..%s server %d req %d: %s: %s\n", h.at(op.call), h.at(op.ret), op.server, op.req, h.describe(op), result)
	}
	return b.String()
}

// TestModelChecker checks the checker on hand-made histories of token t,
// of user u, times in milliseconds.
func TestModelChecker(t *testing.T) {
	t.Parallel()
	base := time.Unix(1_000_000, 0)
	at := func(ms int) time.Time { return base.Add(time.Duration(ms) * time.Millisecond) }
	login := func(v string, call, ret, expiry int) mOp {
		return mOp{kind: mCommit, token: "t", principal: "u", value: v, expiry: at(expiry), loaded: at(call), call: at(call), ret: at(ret)}
	}
	commit := func(v string, loaded, call, ret, expiry int) mOp {
		op := login(v, call, ret, expiry)
		op.loaded = at(loaded)
		return op
	}
	find := func(v string, call, ret int) mOp {
		return mOp{kind: mFind, token: "t", value: v, found: v != "", call: at(call), ret: at(ret)}
	}
	del := func(call, ret int) mOp { return mOp{kind: mDelete, token: "t", call: at(call), ret: at(ret)} }
	dbp := func(call, ret int, except ...string) mOp {
		return mOp{kind: mDeleteByPrincipal, principal: "u", except: except, call: at(call), ret: at(ret)}
	}
	failed := func(op mOp) mOp { op.err = fmt.Errorf("etcdstore: context deadline exceeded"); return op }
	const bound, margin = 8000, 300
	for _, tc := range []struct {
		name string
		ops  []mOp
		want string // in the first violation; "" for none
	}{
		{"a request", []mOp{login("a", 0, 10, 3000), find("a", 20, 30), commit("b", 20, 500, 510, 4000), find("b", 520, 530)}, ""},
		{"commit after expiry takes effect", []mOp{login("a", 0, 10, 1000), find("a", 900, 910), commit("b", 900, 2500, 2510, 5000), find("b", 2520, 2530)}, ""},
		{"lost after expiry", []mOp{login("a", 0, 10, 1000), find("a", 900, 910), commit("b", 900, 2500, 2510, 5000), find("", 2520, 2530)}, "found nothing"},
		{"lost", []mOp{login("a", 0, 10, 3000), find("", 20, 30)}, "found nothing"},
		{"lost, the find near expiry", []mOp{login("a", 0, 10, 3000), find("", 2750, 2760)}, ""},
		{"lost, a logout called", []mOp{login("a", 0, 10, 3000), del(15, 40), find("", 20, 30)}, ""},
		{"lost, a failed logout called", []mOp{login("a", 0, 10, 3000), failed(del(15, 16)), find("", 20, 30)}, ""},
		{"lost, a DeleteByPrincipal called", []mOp{login("a", 0, 10, 3000), dbp(15, 40), find("", 20, 30)}, ""},
		{"lost, another user's DeleteByPrincipal", []mOp{login("a", 0, 10, 3000), func() mOp { o := dbp(15, 16); o.principal = "v"; return o }(), find("", 20, 30)}, "found nothing"},
		{"lost, a DeleteByPrincipal before the login", []mOp{dbp(0, 5), login("a", 10, 20, 3000), find("", 30, 40)}, "found nothing"},
		{"lost, kept by DeleteByPrincipal", []mOp{login("a", 0, 10, 3000), dbp(15, 16, "t"), find("", 20, 30)}, "found nothing"},
		{"lost to a commit in flight that expired", []mOp{login("a", 0, 10, 3000), commit("b", 5, 8, 50, 100), find("", 200, 210)}, ""},
		{"lost to a failed commit", []mOp{login("a", 0, 10, 3000), failed(commit("b", 5, 8, 9, 100)), find("", 200, 210)}, ""},
		{"found after delete", []mOp{login("a", 0, 10, 3000), find("a", 20, 30), del(40, 50), commit("b", 20, 60, 70, 4000), find("b", 80, 90)}, "after delete t returned"},
		{"found after a failed delete", []mOp{login("a", 0, 10, 3000), find("a", 20, 30), failed(del(40, 50)), commit("b", 20, 60, 70, 4000), find("b", 80, 90)}, ""},
		{"found after a commit in the past", []mOp{login("a", 0, 10, 3000), find("a", 20, 30), commit("x", 20, 40, 50, 30), commit("b", 20, 60, 70, 4000), find("b", 80, 90)}, "after commit t \"x\""},
		{"found after DeleteByPrincipal", []mOp{login("a", 0, 10, 1000), find("a", 900, 910), dbp(1100, 1150), commit("b", 900, 1200, 1210, 4000), find("b", 1220, 1230)}, "after deleteByPrincipal u"},
		{"found, kept by DeleteByPrincipal", []mOp{login("a", 0, 10, 1000), find("a", 900, 910), dbp(1100, 1150, "t"), commit("b", 900, 1200, 1210, 4000), find("b", 1220, 1230)}, ""},
		{"found, logged in during DeleteByPrincipal", []mOp{login("a", 0, 100, 3000), dbp(50, 150), find("a", 200, 210)}, ""},
		{"found, the request past the bound", []mOp{login("a", 0, 10, 3000), find("a", 20, 30), del(40, 50), commit("b", 20, 8100, 8110, 12000), find("b", 8120, 8130)}, ""},
		{"found, the find concurrent with the delete", []mOp{login("a", 0, 10, 3000), del(40, 50), find("a", 45, 55)}, ""},
		{"expired value", []mOp{login("a", 0, 10, 500), find("a", 500, 510)}, "which expired"},
		{"value never committed", []mOp{login("a", 0, 10, 3000), find("z", 20, 30)}, "which no commit"},
		{"value committed after the find", []mOp{login("a", 0, 10, 3000), find("b", 20, 30), commit("b", 20, 40, 50, 4000)}, "which no commit"},
		{"stale", []mOp{login("a", 0, 10, 3000), commit("b", 20, 20, 30, 3000), find("a", 40, 50)}, "older than"},
		{"concurrent commits either way", []mOp{login("a", 0, 10, 3000), commit("b", 20, 20, 60, 3000), commit("c", 20, 30, 40, 3000), find("b", 70, 80), find("c", 90, 100)}, ""},
		{"a failed commit lands late", []mOp{login("a", 0, 10, 3000), failed(commit("b", 20, 20, 30, 3000)), find("a", 40, 50), find("b", 60, 70)}, ""},
		{"failed find", []mOp{login("a", 0, 10, 3000), failed(find("", 20, 30))}, ""},
	} {
		got := checkModel(tc.ops, bound*time.Millisecond, margin*time.Millisecond)
		switch {
		case tc.want == "" && len(got) > 0:
			t.Errorf("%s: got %q, want no violation\n%s", tc.name, got[0].what, newMHistory(tc.ops).trace("t"))
		case tc.want != "" && len(got) == 0:
			t.Errorf("%s: got no violation, want one with %q\n%s", tc.name, tc.want, newMHistory(tc.ops).trace("t"))
		case tc.want != "" && !strings.Contains(got[0].what, tc.want):
			t.Errorf("%s: got %q, want one with %q", tc.name, got[0].what, tc.want)
		}
	}
}
