package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Conditional writes: no attempt lands late.
//
// An attempt that timed out or lost its connection may still reach etcd
// later, held in a stalled TCP connection or queued as a proposal that a
// follower forwarded to its old leader, after the store's retry was
// acknowledged and after other app servers' writes. So every commit is a
// Txn conditional on the state it was made against, as Kubernetes makes
// every update of its objects (GuaranteedUpdate): the key's mod revision
// when the store last saw it (the request's own Find, in SCS), or 0, its
// absence, for a token the store does not remember or saw ended. An
// attempt that arrives after anything else wrote the key finds the
// revision moved and writes nothing.
//
// Every end of a session leaves a tombstone (envelope.go, delete.go), not
// an absence that a late first write of the session could fill again: no
// commit writes over a tombstone, whatever the store remembers. It goes
// with its lease, the request bound (WithMaxRequestDuration) after the
// end.
//
// When the compare fails, the Txn's Else branch returns what the key holds
// now, in the same round trip, and the commit decides (afterConflict), from
// what etcd holds alone, so that every app server decides alike:
//   - a tombstone: the session was ended since; the commit writes nothing
//     and returns nil, so a request in flight cannot undo a logout;
//   - nothing: etcd removed the key with its lease, after the session's
//     expiry; the commit is made again on the key's absence, as a new
//     session's, since an expiry ends a session for readers only;
//   - this commit's own value: an earlier attempt landed after all;
//   - another value, after an attempt of this commit failed in a way that
//     leaves its fate unknown: the key's history since the commit's base
//     tells whether that attempt landed and was overwritten since
//     (landedEarlier); if so the commit is done, for it took effect;
//   - another value otherwise: another request's commit of the same
//     session came first (or the store did not remember the token), and
//     the commit is made again on the new revision: concurrent commits of
//     one session end with one of them, the last, and none fails.

// CommitCtx writes the data b of session token, to expire at expiry,
// replacing any earlier data and expiry. An expiry at or before now
// deletes the session instead.
//
// A session ended since (a logout, DeleteByPrincipal, a commit whose
// expiry had passed), by any store, is not written again: CommitCtx
// writes nothing and returns nil, so a request in flight cannot undo a
// logout; the user's next request starts a new session. This holds for
// requests that commit within the request bound of their Find
// (WithMaxRequestDuration), on every app server alike. A session whose
// key etcd removed after its expiry is written again. With
// WithTouchInterval, a commit that changes nothing but pushes the expiry
// back by less than the interval writes nothing either.
//
// It waits for etcd no longer than the store's timeout (WithTimeout),
// trying again meanwhile after a leader change or a lost connection.
// Every attempt is conditional on the state the commit was made against,
// so one that reaches etcd late, after a later attempt or another
// store's write, changes nothing (see Conditional writes in the package
// documentation).
//
// It returns an error, and writes nothing, when token is longer than
// MaxTokenLen, when expiry is after the year 2262, when etcd refuses the
// value for its size (wrapping ErrValueTooLarge), or when etcd is out of
// space (wrapping rpctypes.ErrNoSpace, with what to do in the message).
// It returns an error wrapping context.DeadlineExceeded when the deadline
// passed before etcd answered; the session may then have been written or
// not. Other errors are those of the etcd requests.
func (s *EtcdStore) CommitCtx(ctx context.Context, token string, b []byte, expiry time.Time) (err error) {
	mustContext(ctx, "CommitCtx")
	defer s.stats.begin(&s.stats.commits, &s.stats.latency.commit).end(&err)
	if !validToken(token) {
		return fmt.Errorf("etcdstore: commit: token of %d bytes is longer than MaxTokenLen (%d)", len(token), MaxTokenLen)
	}
	now := s.now()
	if !expiry.After(now) {
		return s.delete(ctx, token, "commit expired session", EndExpired)
	}
	if expiry.After(latestExpiry) {
		return fmt.Errorf("etcdstore: commit: expiry %s is after the latest the store can keep, %s", expiry.UTC().Format(time.RFC3339), latestExpiry.UTC().Format(time.RFC3339))
	}
	if err := clientErr(s.client); err != nil {
		return fmt.Errorf("etcdstore: commit: %w", err)
	}
	return s.commitInLine(ctx, token, b, now, expiry)
}

// commitToken commits the data b of session token, to expire at expiry,
// as CommitCtx, whose checks it passed, at now.
func (s *EtcdStore) commitToken(ctx context.Context, token string, b []byte, now, expiry time.Time) error {
	seen, known := s.tokens.last(token)
	if planCommit(seen, known, now, expiry, s.touch) == commitTouch && s.unchanged(token, seen, b) {
		s.stats.touchesSkipped.Add(1)
		return nil
	}
	key := s.keys.key(token)
	w := &pendingCommit{token: token, key: key, value: s.seal(expiry, key, b), data: b,
		now: now, expiry: expiry, base: seen, baseKnown: known, rev: seen.rev}
	if !known || !seen.stored {
		w.rev = 0 // on the key's absence: a tombstone there refuses it
	}
	if s.index != nil {
		w.principal, w.hasPrincipal, w.digests = s.index.of(seen, known, b)
	}
	return s.commit(s.calls.newCall(ctx), w)
}

// commitPlan is what a commit does before any request.
type commitPlan int

const (
	commitWrite commitPlan = iota // write, conditional on what the store saw
	commitTouch                   // write nothing if the data is unchanged (WithTouchInterval)
)

// planCommit decides what a commit of a session to expire at expiry does,
// at now, from what the store last saw of its token (seen, if known) and
// the touch interval d (0: none). It does no I/O. A token seen ended is
// written like one the store forgot, on the key's absence: whether the
// session may be written again is etcd's to say (its tombstone), not the
// memory's, so every app server does the same.
func planCommit(seen tokenState, known bool, now, expiry time.Time, d time.Duration) commitPlan {
	if known && seen.hasData && touchable(now, seen.expiry, expiry, d) {
		return commitTouch
	}
	return commitWrite
}

// pendingCommit is a commit on its way to etcd.
type pendingCommit struct {
	token, key, value string
	data              []byte // the session data, in the clear
	now, expiry       time.Time
	// base is what the commit is made against, if baseKnown: the stored
	// session whose mod revision is rev (0: none) and whose principal's
	// index entry a change of principal removes.
	base      tokenState
	baseKnown bool
	rev       int64
	// principal is the one the session's data names, if hasPrincipal
	// (WithPrincipal), and digests those to remember with it.
	principal    string
	hasPrincipal bool
	digests      [2]uint64
	// uncertain is set once an attempt failed in a way that leaves
	// unknown whether etcd applied it.
	uncertain bool
}

// commit writes w within c, conditional on w.rev, and again on a newer
// revision after a concurrent commit of the session (see Conditional
// writes).
func (s *EtcdStore) commit(c call, w *pendingCommit) error {
	batched := s.batches != nil && !s.limited(w)
	for {
		var r commitResult
		var err error
		if batched {
			// The first attempt in a batch (batch.go); should the batch
			// fail as a whole, the commit is made again alone.
			batched = false
			if r, err = s.commitInBatch(c, w); err != nil && c.alive() {
				if retryable(err) {
					w.uncertain = true
					s.calls.retries.Add(1)
				}
				continue
			}
		} else if s.limited(w) {
			r, err = s.commitLimited(c, w)
		} else {
			r, err = s.tryCommit(c, w)
		}
		if err != nil {
			if tooLarge(err) {
				return tooLargeError(err, len(w.key)+len(w.value))
			}
			return commitError(err)
		}
		if r.succeeded {
			s.tokens.record(w.token, s.wrote(w, r.rev))
			return nil
		}
		cur := r.cur
		switch afterConflict(cur, w.value, w.uncertain) {
		case conflictDeleted:
			s.stats.refused.Add(1)
			s.tokens.recordGone(w.token, r.rev)
			return nil
		case conflictLanded:
			s.tokens.record(w.token, s.wrote(w, cur.ModRevision))
			return nil
		case conflictAbsent:
			// etcd removed the key with its lease, after the session's
			// expiry: it is written again, as a new one would be, on the
			// key's absence.
			s.stats.conflicts.Add(1)
			w.base, w.baseKnown, w.rev = tokenState{rev: r.rev}, true, 0
			w.uncertain = false
			continue
		case conflictMaybeLanded:
			landed, err := s.landedEarlier(c, w, cur)
			if err != nil {
				return commitError(err)
			}
			if landed {
				s.tokens.record(w.token, s.stateOf(cur))
				return nil
			}
		}
		// Another commit of the session came first: last writer wins. The
		// attempts so far compared an older revision: none can land now.
		s.stats.conflicts.Add(1)
		w.base, w.baseKnown, w.rev = s.stateOf(cur), true, cur.ModRevision
		w.uncertain = false
	}
}

// commitResult is etcd's answer to one attempt of a commit: whether its
// compare held, the revision of the answer, and, when it did not, the key
// as it stood (nil: no key).
type commitResult struct {
	succeeded bool
	rev       int64
	cur       *mvccpb.KeyValue
}

// resultOf is the commitResult of a commit's Txn answered with resp, at
// revision rev.
func resultOf(resp *clientv3.TxnResponse, rev int64) commitResult {
	r := commitResult{succeeded: resp.Succeeded, rev: rev}
	if !r.succeeded {
		if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
			r.cur = kvs[0]
		}
	}
	return r
}

// tryCommit makes w's Txn within c, as many times as c allows, and
// returns etcd's answer.
func (s *EtcdStore) tryCommit(c call, w *pendingCommit) (commitResult, error) {
	return retryValue(s.calls, c, func(ctx context.Context) (commitResult, error) {
		r, err := s.writeOnce(ctx, w)
		if err != nil {
			w.uncertain = true
		}
		return r, err
	})
}

// writeOnce makes one attempt of w alone. A lease that etcd no longer
// knows is forgotten, and the Txn made once more on a fresh one: etcd
// refused it whole.
func (s *EtcdStore) writeOnce(ctx context.Context, w *pendingCommit) (commitResult, error) {
	for attempt := 0; ; attempt++ {
		id, err := s.leases.acquire(ctx, w.now, s.keyExpiry(w.expiry))
		if err != nil {
			return commitResult{}, err
		}
		cmps, then, els := s.commitTxn(w, id).Txn()
		resp, err := s.client.Txn(ctx).If(cmps...).Then(then...).Else(els...).Commit()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			s.leases.forget(id)
			if attempt == 0 {
				continue
			}
		}
		if err != nil {
			return commitResult{}, err
		}
		return resultOf(resp, resp.Header.Revision), nil
	}
}

// commitInBatch makes the first attempt of w in the next batch of
// commits (batch.go) and returns its answer, or the error of the batch.
func (s *EtcdStore) commitInBatch(c call, w *pendingCommit) (commitResult, error) {
	ctx, cancel := attemptContext(c)
	id, err := s.leases.acquire(ctx, w.now, s.keyExpiry(w.expiry))
	cancel()
	if err != nil {
		return commitResult{}, err
	}
	r, err := s.batches.commits.do(&batchItem[commitResult]{c: c, key: w.key, size: len(w.key) + len(w.value), op: s.commitTxn(w, id)})
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		s.leases.forget(id)
	}
	return r, err
}

// commitTxn returns the Txn of w on lease id: if the key's mod revision
// is still w.rev, put the session on the lease, with its principal index
// operations; else get the key.
func (s *EtcdStore) commitTxn(w *pendingCommit, id clientv3.LeaseID) clientv3.Op {
	ops := []clientv3.Op{clientv3.OpPut(w.key, w.value, clientv3.WithLease(id))}
	if s.index != nil {
		ops = append(ops, s.index.ops(w.token, w.base, w.baseKnown, w.principal, w.hasPrincipal, id)...)
	}
	return clientv3.OpTxn(
		[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(w.key), "=", w.rev)},
		ops,
		[]clientv3.Op{clientv3.OpGet(w.key)})
}

// conflict is what a commit whose compare failed does next.
type conflict int

const (
	conflictDeleted     conflict = iota // write nothing: the session was ended
	conflictAbsent                      // write again on the key's absence
	conflictLanded                      // done: an earlier attempt wrote the value
	conflictMaybeLanded                 // read the key's history (landedEarlier)
	conflictOverwrite                   // write again on the key's new revision
)

// afterConflict decides what a commit of value does when its compare
// failed and the key holds cur (nil: nothing), uncertain if an earlier
// attempt's fate is unknown. It does no I/O.
func afterConflict(cur *mvccpb.KeyValue, value string, uncertain bool) conflict {
	switch {
	case cur == nil:
		return conflictAbsent
	case isTombstone(cur.Value):
		return conflictDeleted
	case string(cur.Value) == value:
		return conflictLanded
	case uncertain:
		return conflictMaybeLanded
	default:
		return conflictOverwrite
	}
}

// historyDepth bounds how many earlier versions of a key landedEarlier
// reads.
const historyDepth = 8

// landedEarlier reports whether an attempt of w wrote its value at w's
// key after the revision w was made against and before cur, what the key
// holds now, overwrote it: it reads the key's earlier versions, newest
// first, down to that revision, at most historyDepth of them; for a
// commit made on the key's absence, only the key's first version, which
// its attempt would have written. A history compacted away, or deeper,
// reports false: the commit is then made again, and may write over a
// concurrent commit that came after its own landed.
func (s *EtcdStore) landedEarlier(c call, w *pendingCommit, cur *mvccpb.KeyValue) (bool, error) {
	if w.rev == 0 {
		resp, err := retryValue(s.calls, c, func(ctx context.Context) (*clientv3.GetResponse, error) {
			return s.client.Get(ctx, w.key, clientv3.WithRev(cur.CreateRevision))
		})
		switch {
		case errors.Is(err, rpctypes.ErrCompacted):
			return false, nil
		case err != nil:
			return false, err
		}
		return len(resp.Kvs) > 0 && string(resp.Kvs[0].Value) == w.value, nil
	}
	rev := cur.ModRevision
	for range historyDepth {
		resp, err := retryValue(s.calls, c, func(ctx context.Context) (*clientv3.GetResponse, error) {
			return s.client.Get(ctx, w.key, clientv3.WithRev(rev-1))
		})
		switch {
		case errors.Is(err, rpctypes.ErrCompacted):
			return false, nil
		case err != nil:
			return false, err
		case len(resp.Kvs) == 0 || resp.Kvs[0].ModRevision <= w.rev:
			return false, nil
		case string(resp.Kvs[0].Value) == w.value:
			return true, nil
		}
		rev = resp.Kvs[0].ModRevision
	}
	return false, nil
}

// keyExpiry is how long the key of a session that expires at expiry must
// last: until then, or, with WithPrincipal, the request bound
// (WithMaxRequestDuration) later, so that DeleteByPrincipal still finds a
// session whose expiry passed while a request that loaded it was in
// flight, and ends it before that request commits it again.
func (s *EtcdStore) keyExpiry(expiry time.Time) time.Time {
	if s.index == nil || expiry.After(latestExpiry.Add(-s.request)) {
		return expiry
	}
	return expiry.Add(s.request)
}

// wrote is the state of w's session as written at revision rev.
func (s *EtcdStore) wrote(w *pendingCommit, rev int64) tokenState {
	seen := tokenState{rev: rev, stored: true, expiry: w.expiry}
	if s.touch > 0 {
		seen.data, seen.hasData = w.value[envelopeHeader:], true
		if s.sealer != nil {
			seen.data = string(w.data)
		}
	}
	if s.index != nil {
		seen.principal, seen.principalKnown, seen.digests = w.principal, true, w.digests
		seen.sealedBy = s.index.sealing()
	}
	return seen
}

// stateOf is the state of a stored session kv, which is no tombstone: its
// revision, expiry, and principal (WithPrincipal). A value that does not
// decode has no expiry and no principal.
func (s *EtcdStore) stateOf(kv *mvccpb.KeyValue) tokenState {
	seen := tokenState{rev: kv.ModRevision, stored: true}
	value, err := s.plain(string(kv.Key), kv.Value)
	if err != nil {
		return seen
	}
	expiry, _, data, err := decodeEnvelope(value)
	if err != nil {
		return seen
	}
	seen.expiry = expiry
	if s.index != nil {
		seen.principal, _ = s.index.decode(data)
		seen.principalKnown, seen.sealedBy = true, sealedBy(kv.Value)
	}
	return seen
}

// unchanged reports whether b holds the session seen: the same bytes as
// its data or their known alternative, or the same deadline and values as
// the codec decodes them, in which case b becomes the alternative. Data
// the codec cannot decode counts as changed.
func (s *EtcdStore) unchanged(token string, seen tokenState, b []byte) bool {
	if string(b) == seen.data || (seen.alt != "" && string(b) == seen.alt) {
		return true
	}
	deadline, values, err := s.codec.Decode(b)
	if err != nil {
		s.stats.codecErrors.Add(1)
		return false
	}
	storedDeadline, storedValues, err := s.codec.Decode([]byte(seen.data))
	if err != nil {
		s.stats.codecErrors.Add(1)
		return false
	}
	if !deadline.Equal(storedDeadline) || !reflect.DeepEqual(values, storedValues) {
		return false
	}
	s.tokens.recordAlt(token, seen.rev, string(b))
	return true
}

// touchable reports whether a commit of unchanged data, to expire at
// expiry, may leave the stored session, which expires at stored, as it
// is: when the stored expiry has not passed at now, and the new expiry is
// no earlier than it and less than d later. The session then expires up
// to d earlier than the commit asked, never later. d <= 0 means never.
func touchable(now, stored, expiry time.Time, d time.Duration) bool {
	return d > 0 && stored.After(now) && !expiry.Before(stored) && expiry.Sub(stored) < d
}
