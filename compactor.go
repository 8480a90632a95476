package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// CompactorKey is the etcd key through which the app servers running
// RunCompactor on one cluster agree on who compacts: each interval, the
// one whose Txn on it goes through first.
const CompactorKey = "etcdstore/compactor"

// RunCompactor compacts the etcd keyspace of client's cluster every
// interval, at the revision the cluster had one interval before, until
// ctx is done; it then returns ctx's error. etcd keeps every revision of
// every key until it is compacted, so a session store, which rewrites its
// keys all day, fills etcd's quota without compaction (see
// docs/capacity.md).
//
// Run it on every app server: each interval, exactly one of them
// compacts. Each proposes, in one Txn on CompactorKey, to be the one for
// the interval whose number is the key's version; only the first Txn of
// the interval finds the version it expects, and the others learn the
// new version from their Txn's answer. This is how Kubernetes' apiserver
// compacts (staging/src/k8s.io/apiserver/pkg/storage/etcd3/compact.go).
//
// Compaction is cluster-wide: it drops the history of every key, not only
// the store's. Run it only on a cluster that holds nothing but sessions,
// or whose operator has not set --auto-compaction-retention, which does
// the same from inside etcd and is the better choice where you run etcd
// yourself. With etcd authentication on, the user needs readwrite on
// CompactorKey, and, on etcd 3.5.31, 3.6.9, 3.7 and later, the root role
// to compact (server/etcdserver/api/v3rpc/key.go, kvServer.Compact,
// checks admin permission since those releases; etcd 3.4 compacts for
// any user); a refusal's error says which.
//
// interval must be positive; etcd's history then spans one to two
// intervals. A failed request is tried again at the next interval, since
// etcd may well be back by then; report, if not nil, is called with its
// error, wrapped as the store's errors are, for the app to log.
// RunCompactor returns at once, with an error, for an interval that is not
// positive.
func RunCompactor(ctx context.Context, client *clientv3.Client, interval time.Duration, report func(error)) error {
	mustContext(ctx, "RunCompactor")
	if interval <= 0 {
		return fmt.Errorf("etcdstore: compactor: interval %v is not positive", interval)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var version, rev int64 // the key's version this server expects; the revision to compact at
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		var err error
		version, rev, err = compactOnce(ctx, client, version, rev, interval)
		if err != nil && report != nil && ctx.Err() == nil {
			report(err)
		}
	}
}

// compactOnce makes one interval's Txn on CompactorKey, expecting its
// version to be version, and, if it went through, compacts at rev (0:
// nothing yet). It returns the version to expect next and the revision
// to compact at next interval, the current one, and the error of a
// request that failed.
func compactOnce(ctx context.Context, client *clientv3.Client, version, rev int64, timeout time.Duration) (nextVersion, nextRev int64, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := client.Txn(ctx).
		If(clientv3.Compare(clientv3.Version(CompactorKey), "=", version)).
		Then(clientv3.OpPut(CompactorKey, strconv.FormatInt(rev, 10))).
		Else(clientv3.OpGet(CompactorKey)).
		Commit()
	if err != nil {
		if errors.Is(err, rpctypes.ErrPermissionDenied) {
			return version, rev, fmt.Errorf("etcdstore: compactor: etcd user %q may not write the compactor's key %q: grant its role readwrite on it (etcdctl role grant-permission ROLE readwrite %s): %w", client.Username, CompactorKey, CompactorKey, err)
		}
		return version, rev, fmt.Errorf("etcdstore: compactor: %w", err)
	}
	if !resp.Succeeded {
		// Another server took this interval: follow its count.
		var v int64
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			v = kvs[0].Version
		}
		return v, resp.Header.Revision, nil
	}
	if rev > 0 {
		// A server that compacted at a later revision already did this
		// one's work: ErrCompacted is no failure.
		if _, err := client.Compact(ctx, rev); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
			if errors.Is(err, rpctypes.ErrPermissionDenied) {
				err = fmt.Errorf("etcdstore: compactor: compact at revision %d: etcd refused it to user %q: etcd 3.5.31, 3.6.9, 3.7 and later compact only for a user with the root role; run RunCompactor with a client of such a user, or set etcd's --auto-compaction-retention instead: %w", rev, client.Username, err)
				return version + 1, resp.Header.Revision, err
			}
			err = fmt.Errorf("etcdstore: compactor: compact at revision %d: %w", rev, err)
			return version + 1, resp.Header.Revision, err
		}
	}
	return version + 1, resp.Header.Revision, nil
}
