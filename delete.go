package etcdstore

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// DeleteCtx removes the session token: it leaves a tombstone at its key,
// on the session's lease, which no commit writes over, so neither a
// request in flight that loaded the session before, on any store, nor a
// late attempt of an earlier commit brings it back (see Conditional
// writes in the package documentation). Removing a session that does not
// exist, or a token no session can have (longer than MaxTokenLen, for
// which no request is made), returns nil. Errors are those of the etcd
// request, and ErrClientClosed.
func (s *EtcdStore) DeleteCtx(ctx context.Context, token string) (err error) {
	defer s.stats.begin(&s.stats.deletes, &s.stats.latency.delete).end(&err)
	if !validToken(token) {
		return nil
	}
	return s.delete(ctx, token, "delete")
}

// delete deletes the session token for the method op: it puts a
// tombstone at its key, on the lease the key has (WithIgnoreLease), in one
// request, which fails with rpctypes.ErrKeyNotFound when there is no key:
// nothing to delete. A key without a lease, which no session store writes,
// keeps its tombstone as it would have kept its value. The index entry of
// the session's principal goes with it, when the store knows the
// principal. While etcd is out of space, which refuses every put, it
// deletes the key instead.
func (s *EtcdStore) delete(ctx context.Context, token, op string) error {
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
		return s.bury(ctx, key, entry)
	})
	if err != nil {
		return fmt.Errorf("etcdstore: %s: %w", op, err)
	}
	s.tokens.recordGone(token, rev)
	return nil
}

// bury puts the tombstone at key and deletes the index entry, if not "",
// and returns the revision of the write (0: nothing was written).
func (s *EtcdStore) bury(ctx context.Context, key, entry string) (int64, error) {
	ops := []clientv3.Op{clientv3.OpPut(key, tombstone, clientv3.WithIgnoreLease())}
	if entry != "" {
		ops = append(ops, clientv3.OpDelete(entry))
	}
	rev, err := s.apply(ctx, ops)
	switch {
	case errors.Is(err, rpctypes.ErrKeyNotFound):
		// No key, so no session to bury; its entry goes all the same.
		ops = ops[1:]
	case errors.Is(err, rpctypes.ErrNoSpace):
		// etcd out of space refuses the tombstone's put, but not a
		// delete, which frees space; no commit lands meanwhile.
		ops[0] = clientv3.OpDelete(key)
	default:
		return rev, err
	}
	return s.apply(ctx, ops)
}

// apply makes ops in one request, a Txn if there are several, and returns
// the revision etcd was at after (0 for no ops).
func (s *EtcdStore) apply(ctx context.Context, ops []clientv3.Op) (int64, error) {
	switch len(ops) {
	case 0:
		return 0, nil
	case 1:
		resp, err := s.client.Do(ctx, ops[0])
		if err != nil {
			return 0, err
		}
		if put := resp.Put(); put != nil {
			return put.Header.Revision, nil
		}
		return resp.Del().Header.Revision, nil
	default:
		resp, err := s.client.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return 0, err
		}
		return resp.Header.Revision, nil
	}
}
