package main

import (
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/etcdstore/etcdstore/internal/webtest"
)

// TestMain fails the run if a test leaves a goroutine behind: every
// server, client and embedded etcd a test starts must be stopped. The one
// exception is the cleanup goroutine of the in-memory store scs.New
// installs before newSessionManager replaces it: SCS gives no race-free
// way to stop it (memstore's StopCleanup reads a field its goroutine
// writes).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/alexedwards/scs/v2/memstore.(*MemStore).startCleanup"))
}

// The app as run from the command line: it starts an embedded etcd in its
// data directory, serves, stops cleanly when its context ends, and finds
// its sessions again when started anew on the same directory.
func TestServeKeepsSessionsAcrossRestarts(t *testing.T) {
	t.Parallel()
	cfg, err := parseFlags([]string{"-data", t.TempDir(), "-addr", "127.0.0.1:0", "-compact", "100ms", "-cache"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ann := webtest.New(t)

	// start runs serve in the background and returns the app's URL and a
	// func that stops it and waits for it to return.
	start := func() (string, func()) {
		t.Helper()
		ln, err := net.Listen("tcp", cfg.addr)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- serve(ctx, cfg, ln) }()
		stop := sync.OnceFunc(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("serve: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("serve did not return 30 s after its context ended")
			}
		})
		t.Cleanup(stop)
		return "http://" + ln.Addr().String(), stop
	}

	base, stop := start()
	ann.Want(base, "/put", "stored\n")
	ann.Want(base, "/login?name=ann", "logged in as ann\n")
	stop()

	base, stop = start() // another port on the same host: the cookie still goes
	ann.Want(base, "/get", "Hello from a session!\n")
	ann.Want(base, "/sessions", "live sessions: 1\n")
	// The store's stats, for Prometheus: this run's two requests with a
	// cookie found their session, and the second listed all.
	metrics := ann.MustGet(base, "/metrics")
	for _, want := range []string{
		`etcdstore_calls_total{method="find",store="sessions"} 2`,
		`etcdstore_calls_total{method="all",store="sessions"} 1`,
		`etcdstore_call_duration_seconds_count{method="find",store="sessions"} 2`,
		`etcdstore_errors_total{kind="timeout",store="sessions"} 0`,
	} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("/metrics has no line %q:\n%s", want, metrics)
		}
	}
	// With -cache, the three reads came from the cache or, until it was
	// in sync, from etcd.
	hits, fallbacks := metricValue(t, metrics, `etcdstore_cache_reads_total{result="hit",store="sessions"}`), metricValue(t, metrics, `etcdstore_cache_reads_total{result="fallback",store="sessions"}`)
	if hits+fallbacks != 3 {
		t.Errorf("cache reads: %v hits and %v fallbacks, want 3 in all", hits, fallbacks)
	}
	stop()
}

func TestParseFlags(t *testing.T) {
	t.Parallel()
	cfg, err := parseFlags([]string{"-etcd", "http://127.0.0.1:2379, http://127.0.0.1:22379,", "-prefix", "app:"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(cfg.endpoints, " "), "http://127.0.0.1:2379 http://127.0.0.1:22379"; got != want {
		t.Errorf("endpoints %q, want %q", got, want)
	}
	if cfg.prefix != "app:" || cfg.addr != "127.0.0.1:4000" || cfg.dataDir != "etcd-data" {
		t.Errorf("got prefix %q addr %q data %q, want app:, the default address and data directory", cfg.prefix, cfg.addr, cfg.dataDir)
	}
	for _, args := range [][]string{
		{"-prefix", ""},
		{"-lifetime", "0s"},
		{"-idle", "-1s"},
		{"-touch", "-1s"},
		{"-compact", "-1s"},
		{"-timeout", "0s"},
		{"-idle", "10m", "-touch", "10m"},
		{"extra"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("parseFlags(%q): no error", args)
		}
	}
	// -touch follows -idle unless set.
	for _, tc := range []struct {
		args  []string
		touch time.Duration
	}{
		{nil, 10 * time.Minute},
		{[]string{"-idle", "5m"}, 150 * time.Second},
		{[]string{"-idle", "0"}, 0},
		{[]string{"-idle", "5m", "-touch", "0"}, 0},
		{[]string{"-idle", "5m", "-touch", "1m"}, time.Minute},
	} {
		if cfg, err := parseFlags(tc.args, io.Discard); err != nil || cfg.touch != tc.touch {
			t.Errorf("parseFlags(%q): touch %v, %v; want %v", tc.args, cfg.touch, err, tc.touch)
		}
	}
}

// With no -etcd flag, the endpoints come from ETCD_ENDPOINTS.
func TestParseFlagsFromEnvironment(t *testing.T) {
	t.Setenv("ETCD_ENDPOINTS", "http://127.0.0.1:2379,http://127.0.0.1:22379")
	cfg, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(cfg.endpoints, " "), "http://127.0.0.1:2379 http://127.0.0.1:22379"; got != want {
		t.Errorf("endpoints %q, want %q", got, want)
	}
	cfg, err = parseFlags([]string{"-etcd", "http://127.0.0.1:32379"}, io.Discard)
	if err != nil || strings.Join(cfg.endpoints, " ") != "http://127.0.0.1:32379" {
		t.Errorf("-etcd beside ETCD_ENDPOINTS: %q, %v; want the flag's", cfg.endpoints, err)
	}
}

// metricValue returns the value of the metric line that begins with name
// in Prometheus's text format.
func metricValue(t *testing.T, metrics, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(metrics, "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", name, err)
			}
			return v
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestUnreachableEtcd: an -etcd that does not answer fails the start with
// a message that says what to check.
func TestUnreachableEtcd(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	_, err = connect(context.Background(), config{endpoints: []string{"http://" + addr}, wait: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "did not answer within 300ms") || !strings.Contains(err.Error(), "-etcd") {
		t.Fatalf("connect to a closed port = %v, want an error that says what to check", err)
	}
}
