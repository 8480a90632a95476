package main

// The store's Prometheus collector, added to an app of ../apiserver
// with ../store.

import (
	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/etcdstoreprom"
	"github.com/prometheus/client_golang/prometheus"
)

func init() {
	prometheus.MustRegister(etcdstoreprom.NewCollector(etcdstore.New(client), "sessions"))
}
