// Package etcdstoreprom exports an etcdstore.EtcdStore's Stats to
// Prometheus, as prometheus/client_golang's collectors.NewDBStatsCollector
// does a database/sql DB's:
//
//	store := etcdstore.New(client)
//	prometheus.MustRegister(etcdstoreprom.NewCollector(store, "sessions"))
//
// Every metric carries the label store="<name>". The collector reads
// Stats when Prometheus scrapes, and is safe for concurrent use. The
// metrics, and what to alert on:
//
//	etcdstore_calls_total{method}          counter: calls, by method: find, commit, delete,
//	                                       all, find_by_principal, delete_by_principal.
//	etcdstore_call_duration_seconds{method} histogram: their durations, errors included.
//	                                       Alert on the p99 of find and commit nearing
//	                                       WithTimeout (5 s by default): etcd is failing
//	                                       over, or slow to fsync.
//	etcdstore_errors_total{kind}           counter: calls that returned an error, by kind:
//	                                       no_space, too_large, auth, corrupt, canceled,
//	                                       timeout, other. Alert on any no_space (etcd
//	                                       refuses every write until an operator acts),
//	                                       auth, corrupt, and on timeout rising: each is a
//	                                       500 for a user.
//	etcdstore_retries_total                counter: etcd requests tried again after a
//	                                       leader change or a lost connection. A burst is
//	                                       an election; a steady rate, a sick member.
//	etcdstore_commit_conflicts_total       counter: commits made again on a newer revision
//	                                       (a concurrent commit of the session came first).
//	etcdstore_commits_shared_total         counter: commits acknowledged with the write of
//	                                       a later concurrent commit of the session by the
//	                                       same store (a burst of one session's requests).
//	etcdstore_session_limit_refused_total  counter: logins refused by the session limit
//	                                       (WithSessionLimit's RefuseNew, ErrSessionLimit).
//	etcdstore_session_limit_ended_total    counter: sessions ended by the session limit
//	                                       (EndOldest): users signing in on one device too many.
//	etcdstore_events_total                 counter: session events the store's streams delivered
//	                                       (Events).
//	etcdstore_event_resyncs_total          counter: streams that began without a position or
//	                                       whose position was compacted away. Alert on a rise
//	                                       outside deploys: consumers fall behind compaction.
//	etcdstore_event_lag_revisions          gauge: revisions a stream's last watch response was
//	                                       ahead of what it had delivered: a slow consumer.
//	etcdstore_resurrections_refused_total  counter: commits that wrote nothing, the session
//	                                       having been deleted (a logout overtook them).
//	etcdstore_touches_skipped_total        counter: commits that wrote nothing, with
//	                                       WithTouchInterval.
//	etcdstore_codec_errors_total           counter: times the codec could not decode
//	                                       session data. Alert on any: WithCodec is not
//	                                       the session manager's codec.
//	etcdstore_decrypt_failures_total       counter: reads of sealed sessions that did not
//	                                       open (WithEncryption), served as absent. Alert
//	                                       on any: a key dropped too early or missing on
//	                                       an app server, or values altered in etcd.
//	etcdstore_lease_grants_total           counter: etcd leases granted (about one per
//	                                       1000 commits a bucket).
//	etcdstore_leases                       gauge: leases the store may still use.
//	etcdstore_remembered_tokens            gauge: tokens the store remembers; at the
//	                                       WithRememberedTokens bound, commits take one
//	                                       round trip more.
//	etcdstore_batches_total{kind}          counter: requests that carried several
//	                                       commits (kind commit) or Finds (read).
//	etcdstore_batched_calls_total{kind}    counter: the calls they carried; over
//	                                       batches_total, calls a request.
//	etcdstore_batches_refused_total        counter: batches that failed as a whole,
//	                                       whose calls went alone. Alert on a steady
//	                                       rate: a session outside the user's
//	                                       permissions, or a low --max-request-bytes.
//	etcdstore_cache_reads_total{result}    counter: Finds and Alls by whether the read
//	                                       cache answered (hit) or etcd did (fallback:
//	                                       the cache was not in sync). Alert on fallbacks
//	                                       rising with WithReadCache on.
//	etcdstore_cache_off                    gauge: 1 once the read cache has turned itself
//	                                       off on an etcd it cannot trust (before 3.4.31
//	                                       or 3.5.13, or one that refuses the user its
//	                                       status; EtcdStore.ReadCacheReady says which):
//	                                       reads go to etcd, and count as no fallback.
//
// The etcdstore package itself does not import Prometheus.
package etcdstoreprom

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/etcdstore/etcdstore"
)

// StatsSource is what a collector reads: an *etcdstore.EtcdStore.
type StatsSource interface {
	Stats() etcdstore.Stats
}

// collector exports a store's Stats.
type collector struct {
	store StatsSource

	calls, duration, errors, cache, cacheOff         *prometheus.Desc
	batches, batched, refusedBatches                 *prometheus.Desc
	retries, conflicts, refused, touches, codecError *prometheus.Desc
	shared, limitRefused, limitEnded                 *prometheus.Desc
	events, eventResyncs, eventLag                   *prometheus.Desc
	decryptFailure                                   *prometheus.Desc
	grants, leases, remembered                       *prometheus.Desc
}

// NewCollector returns a collector of store's Stats, whose metrics carry
// the label store=name (see the package documentation for each metric).
func NewCollector(store StatsSource, name string) prometheus.Collector {
	desc := func(metric, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("etcdstore_"+metric, help, labels, prometheus.Labels{"store": name})
	}
	return &collector{
		store:          store,
		calls:          desc("calls_total", "Calls of the session store, by method.", "method"),
		duration:       desc("call_duration_seconds", "Durations of the session store's calls, by method, errors included.", "method"),
		errors:         desc("errors_total", "Calls of the session store that returned an error, by kind.", "kind"),
		cache:          desc("cache_reads_total", "Finds and Alls by whether the read cache answered them (hit) or etcd did (fallback).", "result"),
		cacheOff:       desc("cache_off", "1 once the read cache has turned itself off on an etcd server it cannot trust: reads go to etcd, and count as no fallback."),
		batches:        desc("batches_total", "Requests that carried several commits or Finds, by kind.", "kind"),
		batched:        desc("batched_calls_total", "The commits and Finds the batches carried, by kind.", "kind"),
		refusedBatches: desc("batches_refused_total", "Batches that failed as a whole, whose calls were made again alone."),
		retries:        desc("retries_total", "etcd requests tried again after a leader change or a lost connection."),
		conflicts:      desc("commit_conflicts_total", "Commits made again on a newer revision: a concurrent commit of the session came first."),
		shared:         desc("commits_shared_total", "Commits acknowledged with the write of a later concurrent commit of the session by the same store."),
		limitRefused:   desc("session_limit_refused_total", "Logins refused by the session limit (ErrSessionLimit)."),
		limitEnded:     desc("session_limit_ended_total", "Sessions ended by the session limit (EndOldest)."),
		events:         desc("events_total", "Session events the store's streams delivered."),
		eventResyncs:   desc("event_resyncs_total", "Event streams begun without a position or whose position was compacted away."),
		eventLag:       desc("event_lag_revisions", "Revisions a stream's last watch response was ahead of what it had delivered."),
		refused:        desc("resurrections_refused_total", "Commits that wrote nothing: the session had been deleted."),
		touches:        desc("touches_skipped_total", "Commits that wrote nothing: the session was unchanged and its expiry moved less than the touch interval."),
		codecError:     desc("codec_errors_total", "Session data the codec could not decode: WithCodec is not the session manager's codec."),
		decryptFailure: desc("decrypt_failures_total", "Reads of sealed sessions that did not open (WithEncryption): a key missing, or values altered."),
		grants:         desc("lease_grants_total", "etcd leases granted."),
		leases:         desc("leases", "etcd leases the store may still attach sessions to."),
		remembered:     desc("remembered_tokens", "Session tokens the store remembers."),
	}
}

// Describe sends the descriptions of every metric.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(c, ch)
}

// Collect reads the store's Stats and sends every metric.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.store.Stats()
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	l := st.Latency
	for _, m := range []struct {
		name  string
		calls int64
		h     etcdstore.Histogram
	}{
		{"find", st.Finds, l.Find}, {"commit", st.Commits, l.Commit}, {"delete", st.Deletes, l.Delete},
		{"all", st.Alls, l.All}, {"find_by_principal", st.FindsByPrincipal, l.FindByPrincipal},
		{"delete_by_principal", st.DeletesByPrincipal, l.DeleteByPrincipal},
	} {
		counter(c.calls, m.calls, m.name)
		ch <- prometheus.MustNewConstHistogram(c.duration, m.h.Count, m.h.Sum.Seconds(), buckets(m.h), m.name)
	}
	e := st.Errors
	for _, k := range []struct {
		kind string
		n    int64
	}{
		{"no_space", e.NoSpace}, {"too_large", e.TooLarge}, {"auth", e.Auth}, {"corrupt", e.Corrupt},
		{"canceled", e.Canceled}, {"timeout", e.Timeout}, {"other", e.Other},
	} {
		counter(c.errors, k.n, k.kind)
	}
	counter(c.batches, st.CommitBatches, "commit")
	counter(c.batches, st.ReadBatches, "read")
	counter(c.batched, st.BatchedCommits, "commit")
	counter(c.batched, st.BatchedReads, "read")
	counter(c.refusedBatches, st.RefusedBatches)
	counter(c.cache, st.CacheReads, "hit")
	counter(c.cache, st.CacheFallbacks, "fallback")
	counter(c.retries, st.Retries)
	counter(c.conflicts, st.CommitConflicts)
	counter(c.shared, st.CommitsShared)
	counter(c.limitRefused, st.LimitRefused)
	counter(c.limitEnded, st.LimitEnded)
	counter(c.events, st.EventsDelivered)
	counter(c.eventResyncs, st.EventResyncs)
	ch <- prometheus.MustNewConstMetric(c.eventLag, prometheus.GaugeValue, float64(st.EventLag))
	counter(c.refused, st.ResurrectionsRefused)
	counter(c.touches, st.TouchesSkipped)
	counter(c.codecError, st.CodecErrors)
	counter(c.decryptFailure, st.DecryptFailures)
	counter(c.grants, st.LeaseGrants)
	gauge(c.leases, st.Leases)
	gauge(c.remembered, st.RememberedTokens)
	off := 0
	if st.CacheOff {
		off = 1
	}
	gauge(c.cacheOff, off)
}

// buckets returns h's cumulative buckets by upper bound in seconds.
func buckets(h etcdstore.Histogram) map[float64]uint64 {
	b := make(map[float64]uint64, len(h.Buckets))
	for i, n := range h.Buckets {
		b[etcdstore.LatencyBuckets[i].Seconds()] = n
	}
	return b
}
