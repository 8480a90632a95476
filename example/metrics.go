package main

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/etcdstore/etcdstore"
)

// storeCollector exports a store's Stats to Prometheus, read when
// Prometheus scrapes.
type storeCollector struct {
	store *etcdstore.EtcdStore
}

var (
	callsDesc = prometheus.NewDesc("etcdstore_calls_total",
		"Calls of the session store, by method.", []string{"method"}, nil)
	touchesSkippedDesc = prometheus.NewDesc("etcdstore_touches_skipped_total",
		"Commits that wrote nothing: the session was unchanged and its expiry moved less than the touch interval.", nil, nil)
	refusedDesc = prometheus.NewDesc("etcdstore_resurrections_refused_total",
		"Commits that wrote nothing: the session had been deleted since it was loaded.", nil, nil)
	grantsDesc = prometheus.NewDesc("etcdstore_lease_grants_total",
		"etcd leases granted.", nil, nil)
	leasesDesc = prometheus.NewDesc("etcdstore_leases",
		"etcd leases the store may still attach sessions to.", nil, nil)
	rememberedDesc = prometheus.NewDesc("etcdstore_remembered_tokens",
		"Session tokens the store remembers.", nil, nil)
	retriesDesc = prometheus.NewDesc("etcdstore_retries_total",
		"etcd requests tried again after a leader change or a lost connection.", nil, nil)
	cacheDesc = prometheus.NewDesc("etcdstore_cache_reads_total",
		"Finds and Alls by whether the read cache answered them (hit) or etcd did (fallback).", []string{"result"}, nil)
	errorsDesc = prometheus.NewDesc("etcdstore_errors_total",
		"Calls of the session store that returned an error, by kind.", []string{"kind"}, nil)
)

func (c storeCollector) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(c, ch)
}

func (c storeCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.store.Stats()
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	counter(callsDesc, st.Finds, "find")
	counter(callsDesc, st.Commits, "commit")
	counter(callsDesc, st.Deletes, "delete")
	counter(callsDesc, st.Alls, "all")
	counter(touchesSkippedDesc, st.TouchesSkipped)
	counter(refusedDesc, st.ResurrectionsRefused)
	counter(grantsDesc, st.LeaseGrants)
	gauge(leasesDesc, st.Leases)
	gauge(rememberedDesc, st.RememberedTokens)
	counter(retriesDesc, st.Retries)
	counter(cacheDesc, st.CacheReads, "hit")
	counter(cacheDesc, st.CacheFallbacks, "fallback")
	e := st.Errors
	for kind, n := range map[string]int64{
		"no_space": e.NoSpace, "too_large": e.TooLarge, "auth": e.Auth, "corrupt": e.Corrupt,
		"canceled": e.Canceled, "timeout": e.Timeout, "other": e.Other,
	} {
		counter(errorsDesc, n, kind)
	}
}

// withMetrics serves the store's stats at /metrics, in Prometheus's text
// format, and everything else through app.
func withMetrics(app http.Handler, store *etcdstore.EtcdStore) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(storeCollector{store})
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/", app)
	return mux
}
