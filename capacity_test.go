package etcdstore_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// BenchmarkCapacity measures what sessions cost etcd's database, the
// figures behind docs/capacity.md. Each case starts its own
// member. Left out of -short runs; run it with -benchtime=1x:
//
//	go test -run '^$' -bench Capacity -benchtime=1x .
//
// history-*: bytes of database in use per commit that rewrites a live
// session, as SCS commits on every request with IdleTimeout: etcd keeps
// each revision until it is compacted. It commits historyCommits times
// over hotSessions sessions, with no compaction, and reports the growth
// of DbSizeInUse per commit.
//
// live-*: bytes per live session of 256 B, with no history: it commits n
// sessions to new tokens, compacts at the current revision, defragments,
// and reports the database's size.
//
// tombstone-100k: bytes per deleted session, until its lease ends: it
// commits 100k sessions of 256 B, deletes them, compacts, defragments, and
// reports the database's growth over its size before the commits,
// measured the same way, per session.
func BenchmarkCapacity(b *testing.B) {
	if testing.Short() {
		b.Skip("fills etcd with up to a million sessions")
	}
	const historyCommits = 100_000
	for _, size := range valueSizes {
		b.Run("history-"+size.name, func(b *testing.B) {
			for b.Loop() {
				client, ctx := capacityServer(b)
				store := etcdstore.New(client)
				tokens := newTokens(hotSessions)
				value := newValue(size.n)
				expiry := time.Now().Add(sessionLifetime)
				commit := func(i int) error { return store.CommitCtx(ctx, tokens[i%hotSessions], value, expiry) }
				if err := fill(hotSessions, commit); err != nil {
					b.Fatal(err)
				}
				before := dbSize(b, ctx, client, false)
				if err := fill(historyCommits, commit); err != nil {
					b.Fatal(err)
				}
				after := dbSize(b, ctx, client, false)
				b.ReportMetric(float64(after-before)/historyCommits, "bytes/commit")
			}
		})
	}
	for _, n := range []int{10_000, 100_000, 1_000_000} {
		b.Run("live-"+strconv.Itoa(n/1000)+"k", func(b *testing.B) {
			for b.Loop() {
				client, ctx := capacityServer(b)
				store := etcdstore.New(client)
				value := newValue(256)
				tokens := newTokens(n)
				expiry := time.Now().Add(sessionLifetime)
				if err := fill(n, func(i int) error { return store.CommitCtx(ctx, tokens[i], value, expiry) }); err != nil {
					b.Fatal(err)
				}
				compact(b, ctx, client)
				size := dbSize(b, ctx, client, true)
				b.ReportMetric(float64(size)/(1<<20), "db-MB")
				b.ReportMetric(float64(size)/float64(n), "bytes/session")
			}
		})
	}
	b.Run("tombstone-100k", func(b *testing.B) {
		const n = 100_000
		for b.Loop() {
			client, ctx := capacityServer(b)
			store := etcdstore.New(client)
			compact(b, ctx, client)
			empty := dbSize(b, ctx, client, true)
			value := newValue(256)
			tokens := newTokens(n)
			expiry := time.Now().Add(sessionLifetime)
			if err := fill(n, func(i int) error { return store.CommitCtx(ctx, tokens[i], value, expiry) }); err != nil {
				b.Fatal(err)
			}
			if err := fill(n, func(i int) error { return store.DeleteCtx(ctx, tokens[i]) }); err != nil {
				b.Fatal(err)
			}
			compact(b, ctx, client)
			size := dbSize(b, ctx, client, true)
			b.ReportMetric(float64(size)/(1<<20), "db-MB")
			b.ReportMetric(float64(size-empty)/float64(n), "bytes/tombstone")
		}
	})
}

// capacityServer starts a member for one BenchmarkCapacity case, with
// fsync off (the sizes do not depend on it) and a quota that the largest
// case fits in.
func capacityServer(b *testing.B) (*clientv3.Client, context.Context) {
	b.Helper()
	srv := etcdtest.Start(b, etcdtest.WithQuota(8<<30))
	return srv.Client(b), etcdtest.Context(b, benchTimeout)
}

// dbSize returns the bytes of the member's database in use, after a
// defragmentation if defrag, which returns the free pages to the system.
func dbSize(b *testing.B, ctx context.Context, client *clientv3.Client, defrag bool) int64 {
	b.Helper()
	ep := client.Endpoints()[0]
	if defrag {
		if _, err := client.Defragment(ctx, ep); err != nil {
			b.Fatalf("defragment: %v", err)
		}
	}
	st, err := client.Status(ctx, ep)
	if err != nil {
		b.Fatalf("status: %v", err)
	}
	return st.DbSizeInUse
}
