package etcdstoreprom_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/etcdstoreprom"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestCollector: the metrics are the store's Stats, labelled with the
// store's name, and pass Prometheus's lint.
func TestCollector(t *testing.T) {
	srv := etcdtest.Start(t)
	store := etcdstore.NewWithPrefix(srv.Client(t), "prom:")
	for i := range 3 {
		if err := store.Commit("tok", []byte("x"), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if i < 2 {
			if _, found, err := store.Find("tok"); err != nil || !found {
				t.Fatal(found, err)
			}
		}
	}
	if err := store.Commit(strings.Repeat("x", etcdstore.MaxTokenLen+1), nil, time.Now().Add(time.Hour)); err == nil {
		t.Fatal("no error for a long token")
	}
	c := etcdstoreprom.NewCollector(store, "sessions")
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v, %v", problems, err)
	}
	want := `
# HELP etcdstore_calls_total Calls of the session store, by method.
# TYPE etcdstore_calls_total counter
etcdstore_calls_total{method="all",store="sessions"} 0
etcdstore_calls_total{method="commit",store="sessions"} 4
etcdstore_calls_total{method="delete",store="sessions"} 0
etcdstore_calls_total{method="delete_by_principal",store="sessions"} 0
etcdstore_calls_total{method="find",store="sessions"} 2
etcdstore_calls_total{method="find_by_principal",store="sessions"} 0
# HELP etcdstore_errors_total Calls of the session store that returned an error, by kind.
# TYPE etcdstore_errors_total counter
etcdstore_errors_total{kind="auth",store="sessions"} 0
etcdstore_errors_total{kind="canceled",store="sessions"} 0
etcdstore_errors_total{kind="corrupt",store="sessions"} 0
etcdstore_errors_total{kind="no_space",store="sessions"} 0
etcdstore_errors_total{kind="other",store="sessions"} 1
etcdstore_errors_total{kind="timeout",store="sessions"} 0
etcdstore_errors_total{kind="too_large",store="sessions"} 0
# HELP etcdstore_remembered_tokens Session tokens the store remembers.
# TYPE etcdstore_remembered_tokens gauge
etcdstore_remembered_tokens{store="sessions"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "etcdstore_calls_total", "etcdstore_errors_total", "etcdstore_remembered_tokens"); err != nil {
		t.Error(err)
	}

	// The histograms count the calls.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "etcdstore_call_duration_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			method := m.GetLabel()[0].GetValue()
			want := map[string]uint64{"commit": 4, "find": 2}[method]
			if got := m.GetHistogram().GetSampleCount(); got != want {
				t.Errorf("duration of %s: %d calls, want %d", method, got, want)
			}
		}
		return
	}
	t.Error("no etcdstore_call_duration_seconds")
}

// fakeStats is a StatsSource of fixed Stats.
type fakeStats etcdstore.Stats

func (f fakeStats) Stats() etcdstore.Stats { return etcdstore.Stats(f) }

// TestCollectorCacheOff: etcdstore_cache_off is 1 once the read cache
// has turned itself off, 0 otherwise, so that an alert on fallbacks
// need not fire on a server too old for the cache.
func TestCollectorCacheOff(t *testing.T) {
	for _, off := range []bool{false, true} {
		want := "0"
		if off {
			want = "1"
		}
		c := etcdstoreprom.NewCollector(fakeStats{CacheOff: off}, "sessions")
		exp := `
# HELP etcdstore_cache_off 1 once the read cache has turned itself off on an etcd server it cannot trust: reads go to etcd, and count as no fallback.
# TYPE etcdstore_cache_off gauge
etcdstore_cache_off{store="sessions"} ` + want + "\n"
		if err := testutil.CollectAndCompare(c, strings.NewReader(exp), "etcdstore_cache_off"); err != nil {
			t.Errorf("CacheOff %v: %v", off, err)
		}
	}
}
