package etcdstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Session limits: at most n live sessions a principal.
//
// A commit that gives a session a principal it did not have (a login,
// in SCS terms; WithSessionLimit) reads the principal's index entries and
// their sessions at revision R, and decides: its own session plus the
// principal's other live sessions must not exceed the limit. It then makes
// one Txn that holds only if, for each index range of the principal
// (one, or one per encryption key), no entry was created after R:
//
//	If   mod_revision(session key) = the commit's base revision
//	     create_revision(every key of the principal's range) < R+1
//	     create_revision(entry of each session it ends) = as read
//	Then put the session and its entry;
//	     put a tombstone at each session it ends, delete its entry
//	Else get the session key
//
// etcd applies a compare to every key of a range when it has a range end
// (api/etcdserverpb/rpc.proto, Compare.range_end; server/etcdserver/
// apply.go, applyCompare, in etcd 3.4 to 3.7). An entry is created only
// by a commit that gives its session the principal, which makes this same
// check; the other commits of a session rewrite its entry, which keeps
// its create revision. So between the read and the Txn the principal can
// only have lost sessions, or the Txn fails, and is made again from a
// fresh read: two logins at once on two app servers cannot both see
// room for one.
//
// Sessions of the principal whose expiry has passed but whose key etcd
// still holds (a store with WithPrincipal keeps it the request bound
// longer) are ended in the same Txn, with EndExpired: a request in flight
// could otherwise commit one again past the limit, since such a commit
// does not give its session a new principal. With EndOldest, the oldest
// live sessions (by their entry's create revision: when each was first
// committed for the principal) get tombstones with EndSessionLimit; with
// RefuseNew the commit fails with ErrSessionLimit and writes nothing.
//
// A commit that keeps its session's principal costs nothing more.

// LimitPolicy is what a commit that would give a principal more live
// sessions than its limit does (WithSessionLimit).
type LimitPolicy int

const (
	// EndOldest ends the principal's oldest sessions, those first
	// committed for it longest ago, to make room: each gets a tombstone
	// whose reason is EndSessionLimit, and no request in flight brings it
	// back. "The last login wins."
	EndOldest LimitPolicy = iota
	// RefuseNew fails the commit with an error wrapping ErrSessionLimit,
	// and writes nothing. "The first logins keep their seats."
	RefuseNew
)

// String returns "end oldest" or "refuse new".
func (p LimitPolicy) String() string {
	if p == RefuseNew {
		return "refuse new"
	}
	return "end oldest"
}

// ErrSessionLimit is wrapped by the error Commit and CommitCtx return,
// having written nothing, for a commit that would give a principal more
// live sessions than its limit under WithSessionLimit's RefuseNew. SCS's
// own commit at the end of a request only reaches the session manager's
// ErrorFunc: a login handler that wants to answer "too many devices"
// calls sm.Commit itself after sm.Put and checks for it (README, Session
// limits).
var ErrSessionLimit = errors.New("etcdstore: session limit reached")

// limitPasses bounds how often a limited commit reads the principal's
// sessions again after a concurrent change failed its Txn, with a growing
// random pause between: within the call's deadline, and at most this
// often.
const limitPasses = 64

// maxEndsPerTxn bounds the sessions one limited commit's Txn ends: two
// operations each, with the commit's own three, within etcd's default
// --max-txn-ops.
const maxEndsPerTxn = 60

// sessionLimit is WithSessionLimit's: the limit of each principal and
// what a commit over it does.
type sessionLimit struct {
	of     func(principal string) int
	policy LimitPolicy
}

// limited reports whether w gives its session a principal it did not
// have, as far as the commit knows, when that principal has a limit.
func (s *EtcdStore) limited(w *pendingCommit) bool {
	if s.limit == nil || !w.hasPrincipal {
		return false
	}
	if w.baseKnown && w.base.stored && w.base.principalKnown && w.base.principal == w.principal {
		return false
	}
	return s.limit.of(w.principal) > 0
}

// limitCandidate is another session of a principal, as a limited commit
// read it.
type limitCandidate struct {
	token   string
	entries []indexEntry // its index entries under the principal
	created int64        // the least of their create revisions
	live    bool         // live, or expired with its key still held
}

// limitPlan is what a limited commit does.
type limitPlan struct {
	refuse bool
	live   int              // the principal's other live sessions
	oldest []limitCandidate // to end with EndSessionLimit
	gone   []limitCandidate // expired, to end with EndExpired
	// guards are the principal's index entries that index none of its
	// other sessions: stale ones, and the commit's own. A commit that
	// gives its session the principal again rewrites such an entry, which
	// keeps its create revision, so the login compares their mod
	// revisions too.
	guards []indexEntry
}

// planLimit decides a commit that gives its session a principal with
// limit n (> 0) and the other sessions cands under policy. It does no
// I/O.
func planLimit(cands []limitCandidate, n int, policy LimitPolicy) limitPlan {
	var p limitPlan
	var live []limitCandidate
	for _, c := range cands {
		if c.live {
			live = append(live, c)
		} else {
			p.gone = append(p.gone, c)
		}
	}
	p.live = len(live)
	if excess := len(live) - (n - 1); excess > 0 {
		if policy == RefuseNew {
			return limitPlan{refuse: true, live: len(live)}
		}
		slices.SortFunc(live, func(a, b limitCandidate) int {
			return cmp.Or(cmp.Compare(a.created, b.created), cmp.Compare(a.token, b.token))
		})
		p.oldest = live[:excess]
	}
	return p
}

// limitCandidates returns the sessions of w's principal that entries and
// kvs, as principalSessions read them, show live or expired and naming
// it, but w's own, and the entries that index none of them (guards).
func (s *EtcdStore) limitCandidates(w *pendingCommit, entries []indexEntry, kvs map[string]*mvccpb.KeyValue) ([]limitCandidate, []indexEntry, error) {
	by := make(map[string]*limitCandidate)
	var cands []*limitCandidate
	var guards []indexEntry
	for _, e := range entries {
		if e.token == w.token {
			guards = append(guards, e)
			continue
		}
		c := by[e.token]
		if c == nil {
			_, names, live, err := s.storedPrincipal(kvs[e.token], w.principal)
			if err != nil {
				return nil, nil, fmt.Errorf("%w (%s)", err, whichSession(kvs[e.token].ModRevision))
			}
			if !names {
				guards = append(guards, e) // a stale entry; DeleteByPrincipal removes it
				continue
			}
			c = &limitCandidate{token: e.token, created: e.created, live: live}
			by[e.token] = c
			cands = append(cands, c)
		}
		c.entries = append(c.entries, e)
		c.created = min(c.created, e.created)
	}
	out := make([]limitCandidate, len(cands))
	for i, c := range cands {
		out[i] = *c
	}
	return out, guards, nil
}

// limitedResult is etcd's answer to one attempt of a limited commit, and
// whether its Txn failed only because the principal's sessions changed.
type limitedResult struct {
	commitResult
	moved bool
}

// commitLimited makes w, which gives its session a principal with a
// limit, within c: it reads the principal's sessions and writes under
// the compares above, again from a fresh read when another change of
// them came first. A conflict on the session's own key is returned, for
// commit to decide as any other's.
func (s *EtcdStore) commitLimited(c call, w *pendingCommit) (commitResult, error) {
	n := s.limit.of(w.principal)
	for pass := range limitPasses {
		if pass > 0 && !s.calls.pause(c, pass) {
			break
		}
		entries, kvs, rev, err := s.principalSessions(c, w.principal)
		if err != nil {
			return commitResult{}, err
		}
		cands, guards, err := s.limitCandidates(w, entries, kvs)
		if err != nil {
			return commitResult{}, err
		}
		plan := planLimit(cands, n, s.limit.policy)
		plan.guards = guards
		if plan.refuse {
			s.stats.limitRefused.Add(1)
			return commitResult{}, fmt.Errorf("a new session would give the principal %d live sessions, over its limit of %d: %w", plan.live+1, n, ErrSessionLimit)
		}
		if len(plan.guards) > maxEndsPerTxn {
			// Many stale entries: delete them first, each if it is still
			// the one read, then read again.
			if err := s.dropStale(c, plan.guards, w.token); err != nil {
				return commitResult{}, err
			}
			continue
		}
		if len(plan.oldest)+len(plan.gone)+len(plan.guards) > maxEndsPerTxn {
			// More to end than fits in one Txn with the commit (a limit
			// lowered far, or many sessions expired at once): end the
			// first of them alone, then read again.
			ends := slices.Concat(plan.oldest, plan.gone)
			first := ends[:min(len(ends), maxEndsPerTxn)]
			if err := s.endAlone(c, first, len(plan.oldest)); err != nil {
				return commitResult{}, err
			}
			continue
		}
		r, err := retryValue(s.calls, c, func(ctx context.Context) (limitedResult, error) {
			r, err := s.limitedOnce(ctx, w, plan, rev)
			if err != nil {
				w.uncertain = true
			}
			return r, err
		})
		if err != nil {
			return commitResult{}, err
		}
		if r.moved {
			s.stats.conflicts.Add(1)
			continue
		}
		if r.succeeded {
			s.stats.limitEnded.Add(int64(len(plan.oldest)))
			for _, e := range slices.Concat(plan.oldest, plan.gone) {
				s.tokens.recordGone(e.token, r.rev)
			}
		}
		return r.commitResult, nil
	}
	return commitResult{}, fmt.Errorf("other logins of the principal kept changing its sessions for %d tries: %w", limitPasses, context.DeadlineExceeded)
}

// limitedOnce makes one attempt of w's limited Txn, planned as plan on a
// read of the principal's sessions at revision rev.
func (s *EtcdStore) limitedOnce(ctx context.Context, w *pendingCommit, plan limitPlan, rev int64) (limitedResult, error) {
	for attempt := 0; ; attempt++ {
		id, err := s.leases.acquire(ctx, w.now, s.keyExpiry(w.expiry))
		if err != nil {
			return limitedResult{}, err
		}
		var tomb clientv3.LeaseID
		if len(plan.oldest)+len(plan.gone) > 0 {
			if tomb, err = s.tombstoneLease(ctx); err != nil {
				return limitedResult{}, err
			}
		}
		cmps, then, els := s.commitTxn(w, id).Txn()
		for _, id := range s.index.sealer.indexIDs() {
			from, _ := s.index.entries(id, w.principal)
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(from), "<", rev+1).WithPrefix())
		}
		for _, e := range plan.guards {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(e.key), "=", e.rev))
		}
		now := s.now()
		for _, e := range plan.oldest {
			cmps, then = endCandidate(cmps, then, s.keys.key(e.token), e, tombstoneOf(EndSessionLimit, now), tomb)
		}
		for _, e := range plan.gone {
			cmps, then = endCandidate(cmps, then, s.keys.key(e.token), e, tombstoneOf(EndExpired, now), tomb)
		}
		resp, err := s.client.Txn(ctx).If(cmps...).Then(then...).Else(els...).Commit()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			s.leases.forget(id)
			s.leases.forget(tomb)
			if attempt == 0 {
				continue
			}
		}
		if err != nil {
			return limitedResult{}, err
		}
		r := limitedResult{commitResult: resultOf(resp, resp.Header.Revision)}
		if !r.succeeded {
			// The session's key as the commit expected it: what failed was
			// a compare of the principal's sessions.
			r.moved = (r.cur == nil && w.rev == 0) || (r.cur != nil && r.cur.ModRevision == w.rev)
		}
		return r, nil
	}
}

// endAlone ends the sessions ends within c, the first limit of them with
// EndSessionLimit and the others with EndExpired, in one Txn whose
// compares are those of endCandidate. A Txn that a concurrent change
// failed ends none; the caller reads again.
func (s *EtcdStore) endAlone(c call, ends []limitCandidate, limit int) error {
	_, err := retryValue(s.calls, c, func(ctx context.Context) (*clientv3.TxnResponse, error) {
		tomb, err := s.tombstoneLease(ctx)
		if err != nil {
			return nil, err
		}
		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		now := s.now()
		for i, e := range ends {
			stone := tombstoneOf(EndExpired, now)
			if i < limit {
				stone = tombstoneOf(EndSessionLimit, now)
			}
			cmps, ops = endCandidate(cmps, ops, s.keys.key(e.token), e, stone, tomb)
		}
		resp, err := s.client.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			s.leases.forget(tomb) // ends none; the next pass gets a fresh one
			return resp, nil
		}
		return resp, err
	})
	return err
}

// dropStale deletes the entries of guards but token's, each if its mod
// revision is still the one read, in one Txn within c. A Txn that a
// concurrent change failed deletes none; the caller reads again.
func (s *EtcdStore) dropStale(c call, guards []indexEntry, token string) error {
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	for _, e := range guards[:min(len(guards), maxTxnOps-4)] {
		if e.token != token {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(e.key), "=", e.rev))
			ops = append(ops, clientv3.OpDelete(e.key))
		}
	}
	_, err := retryValue(s.calls, c, func(ctx context.Context) (*clientv3.TxnResponse, error) {
		return s.client.Txn(ctx).If(cmps...).Then(ops...).Commit()
	})
	return err
}

// endCandidate adds to a Txn's compares and operations the end of e, whose
// session is at key: a tombstone stone on lease id, and the deletion of
// its entries, if each entry is the one read.
func endCandidate(cmps []clientv3.Cmp, ops []clientv3.Op, key string, e limitCandidate, stone string, id clientv3.LeaseID) ([]clientv3.Cmp, []clientv3.Op) {
	ops = append(ops, clientv3.OpPut(key, stone, clientv3.WithLease(id)))
	for _, en := range e.entries {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(en.key), "=", en.created))
		ops = append(ops, clientv3.OpDelete(en.key))
	}
	return cmps, ops
}
