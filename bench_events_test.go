package etcdstore_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// BenchmarkLogoutEvent times the delay from a logout on one app server
// (the call to Delete) to its EventEnded on another's event stream: two
// stores, each on a client of its own, one etcd member with fsync on.
// Each op commits a session, waits for its EventCreated, then logs it out
// and times the wait for its EventEnded. It reports the median and the
// 99th percentile (p50-ms, p99-ms) and the mean in ns/op.
func BenchmarkLogoutEvent(b *testing.B) {
	srv := etcdtest.Start(b, etcdtest.WithFsync())
	ctx := etcdtest.Context(b, benchTimeout)
	a := etcdstore.New(srv.Client(b))
	other := etcdstore.New(srv.Client(b))
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan etcdstore.Event, 16)
	go func() {
		defer close(events)
		for ev, err := range other.Events(sctx, etcdstore.Position{}) {
			if err != nil {
				b.Error(err)
				return
			}
			if ev.Kind != etcdstore.EventChanged {
				events <- ev
			}
		}
	}()
	wait := func(kind etcdstore.EventKind, token string) {
		for {
			select {
			case ev := <-events:
				if ev.Kind == kind && ev.Token == token {
					return
				}
			case <-time.After(10 * time.Second):
				b.Fatalf("no %v event for %s", kind, token)
			}
		}
	}
	wait(etcdstore.EventResync, "") // the stream has begun
	tokens := newTokens(b.N)
	delays := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		if err := a.CommitCtx(ctx, tokens[i], []byte("x"), time.Now().Add(time.Hour)); err != nil {
			b.Fatal(err)
		}
		wait(etcdstore.EventCreated, tokens[i])
		b.StartTimer()
		began := time.Now()
		if err := a.DeleteCtx(ctx, tokens[i]); err != nil {
			b.Fatal(err)
		}
		wait(etcdstore.EventEnded, tokens[i])
		delays = append(delays, time.Since(began))
	}
	b.StopTimer()
	slices.Sort(delays)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(delays[len(delays)/2]), "p50-ms")
	b.ReportMetric(ms(delays[len(delays)*99/100]), "p99-ms")
}
