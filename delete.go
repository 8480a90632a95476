package etcdstore

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// DeleteCtx ends the session token: it leaves a tombstone at its key,
// which no commit writes over, for the store's request bound
// (WithMaxRequestDuration, 5 minutes by default), so neither a request in
// flight that loaded the session before, on any store, whatever that
// store remembers, nor a late attempt of an earlier commit brings it back
// (see Ending a session in the package documentation). It does so whether
// the key holds a live session, an expired one, or nothing. A token no
// session can have (longer than MaxTokenLen) makes no request and returns
// nil. Errors are those of the etcd requests, and ErrClientClosed.
func (s *EtcdStore) DeleteCtx(ctx context.Context, token string) (err error) {
	mustContext(ctx, "DeleteCtx")
	defer s.stats.begin(&s.stats.deletes, &s.stats.latency.delete).end(&err)
	if !validToken(token) {
		return nil
	}
	return s.delete(ctx, token, "delete", EndLogout)
}

// delete ends the session token for the method op and reason: it puts a
// tombstone at its key, with the reason, on a lease that lasts the request bound (tombstoneLease), and,
// in the same request, deletes the index entry of the session's principal,
// when the store knows the principal. While etcd is out of space, which
// refuses every put, it deletes the key instead.
func (s *EtcdStore) delete(ctx context.Context, token, op string, reason EndReason) error {
	if err := clientErr(s.client); err != nil {
		return fmt.Errorf("etcdstore: %s: %w", op, err)
	}
	key := s.keys.key(token)
	var entry string
	if seen, ok := s.tokens.last(token); ok && seen.stored && seen.principalKnown && seen.principal != "" && s.index != nil {
		if e, ok := s.index.entry(seen.sealedBy, seen.principal, token); ok {
			entry = e // else under a key dropped since: it goes with its lease
		}
	}
	rev, err := retryValue(s.calls, s.calls.newCall(ctx), func(ctx context.Context) (int64, error) {
		return s.bury(ctx, key, entry, reason)
	})
	if err != nil {
		return fmt.Errorf("etcdstore: %s: %w", op, err)
	}
	s.tokens.recordGone(token, rev)
	return nil
}

// bury puts the tombstone of reason at key and deletes the index entry, if not "",
// in one request, and returns the revision of the write. A lease etcd no
// longer knows is forgotten and the request made once more on a fresh one.
func (s *EtcdStore) bury(ctx context.Context, key, entry string, reason EndReason) (int64, error) {
	for attempt := 0; ; attempt++ {
		ops := []clientv3.Op{clientv3.OpDelete(key)}
		if entry != "" {
			ops = append(ops, clientv3.OpDelete(entry))
		}
		id, err := s.tombstoneLease(ctx)
		if errors.Is(err, rpctypes.ErrNoSpace) {
			// etcd out of space refuses a grant and the tombstone's put,
			// but not a delete, which frees space; no commit lands
			// meanwhile.
			return s.apply(ctx, ops)
		}
		if err != nil {
			return 0, err
		}
		ops[0] = clientv3.OpPut(key, tombstoneOf(reason, s.now()), clientv3.WithLease(id))
		rev, err := s.apply(ctx, ops)
		switch {
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			s.leases.forget(id)
			if attempt == 0 {
				continue
			}
		case errors.Is(err, rpctypes.ErrNoSpace):
			ops[0] = clientv3.OpDelete(key)
			return s.apply(ctx, ops)
		}
		return rev, err
	}
}

// tombstoneLease returns a lease for one tombstone: one that lasts the
// request bound from now, shared with the tombstones and sessions that end
// at about the same time.
func (s *EtcdStore) tombstoneLease(ctx context.Context) (clientv3.LeaseID, error) {
	now := s.now()
	return s.leases.acquire(ctx, now, now.Add(s.request))
}

// apply makes ops in one request, a Txn if there are several, and returns
// the revision etcd was at after.
func (s *EtcdStore) apply(ctx context.Context, ops []clientv3.Op) (int64, error) {
	if len(ops) == 1 {
		resp, err := s.client.Do(ctx, ops[0])
		if err != nil {
			return 0, err
		}
		if put := resp.Put(); put != nil {
			return put.Header.Revision, nil
		}
		return resp.Del().Header.Revision, nil
	}
	resp, err := s.client.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}
