package main

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/etcdstoreprom"
)

// withMetrics serves the store's stats at /metrics, in Prometheus's text
// format (etcdstoreprom lists each metric), and everything else through
// app.
func withMetrics(app http.Handler, store *etcdstore.EtcdStore) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(etcdstoreprom.NewCollector(store, "sessions"))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/", app)
	return mux
}
