// Command loadtest measures the example app (internal/exampleapp) under
// wrk, on loopback, with its sessions in etcdstore and then in the naive
// store (one new lease per commit, as github.com/alexedwards/scs/etcdstore
// does), and prints requests per second and latency percentiles for both.
//
// For each store it starts a fresh embedded etcd member with fsync on, as
// in production, serves the app with an SCS IdleTimeout so that every
// request loads and commits its session, starts -sessions sessions with
// a request each to -new, and runs wrk against -path for -warmup and then
// for -d, with -c connections on -t threads. A Lua script hands each
// request the cookie of one of the sessions in turn. Afterwards it checks
// that no request failed, that every request found its session, and that
// the keyspace holds exactly the sessions started. It installs wrk with
// apt-get when it is missing.
//
// Usage:
//
//	go run ./loadtest [-d 10s] [-c 32] [-t 2] [-sessions 1000]
package main

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/alexedwards/scs/v2"
	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/embedetcd"
	"github.com/etcdstore/etcdstore/internal/exampleapp"
	"github.com/etcdstore/etcdstore/internal/naive"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
)

//go:embed sessions.lua
var sessionsLua []byte

var (
	duration    = flag.Duration("d", 10*time.Second, "how long each measured wrk run lasts")
	warmup      = flag.Duration("warmup", 2*time.Second, "how long wrk runs, unmeasured, before each measured run")
	connections = flag.Int("c", 32, "wrk connections")
	threads     = flag.Int("t", 2, "wrk threads")
	sessions    = flag.Int("sessions", 1000, "sessions the requests take turns with")
	path        = flag.String("path", "/get", "the app path wrk requests")
	newSession  = flag.String("new", "/put", "the app path that starts a session with some data in it")
	idle        = flag.Duration("idle", 20*time.Minute, "SCS IdleTimeout: with it every request commits its session")
	lifetime    = flag.Duration("lifetime", 24*time.Hour, "SCS Lifetime")
	naiveFirst  = flag.Bool("naive-first", false, "measure the naive store first, to check that the order does not favour either")
)

// store is one session store under test.
type store struct {
	name string
	new  func(*clientv3.Client) scs.CtxStore
}

var stores = []store{
	{"etcdstore", func(c *clientv3.Client) scs.CtxStore { return etcdstore.New(c) }},
	{"naive", func(c *clientv3.Client) scs.CtxStore { return &naive.Store{Client: c, Prefix: etcdstore.DefaultPrefix} }},
}

// result is what one measured run gave.
type result struct {
	store       string
	wrk         wrkResult
	appErrors   int64 // requests the app answered 500 because of the store
	aborted     int64 // requests wrk closed while they ran, at its end
	hits        int64 // finds that found a session during the measured run
	misses      int64 // finds that found none
	commits     int64 // commits during the measured run
	leases      int   // leases granted during the measured run
	keys        int64 // session keys after the run
	dbSize      int64 // bytes
	dbSizeInUse int64 // bytes
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("loadtest: ")
	flag.Parse()
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	wrk, err := findWrk()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "loadtest-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	script := filepath.Join(tmp, "sessions.lua")
	if err := os.WriteFile(script, sessionsLua, 0o644); err != nil {
		return err
	}

	order := stores
	if *naiveFirst {
		order = []store{stores[1], stores[0]}
	}
	var results []result
	for _, s := range order {
		dir := filepath.Join(tmp, s.name)
		r, err := measure(wrk, script, dir, s)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		results = append(results, r)
	}
	report(os.Stdout, results)
	for _, r := range results {
		if r.wrk.non2xx > 0 || r.wrk.socketErrors != "" || r.appErrors > 0 {
			return fmt.Errorf("%s: requests failed: %d non-2xx, %d store errors, socket errors %q", r.store, r.wrk.non2xx, r.appErrors, r.wrk.socketErrors)
		}
		if r.misses > 0 || r.hits == 0 {
			return fmt.Errorf("%s: %d requests found their session, %d did not", r.store, r.hits, r.misses)
		}
		if r.keys != int64(*sessions) {
			return fmt.Errorf("%s: %d session keys after the run, want %d", r.store, r.keys, *sessions)
		}
	}
	return nil
}

// measure runs the load test of one store on a fresh etcd member whose
// data lives in dir.
func measure(wrk, script, dir string, s store) (result, error) {
	r := result{store: s.name}
	// Bounds every etcd request and the whole run.
	ctx, cancel := context.WithTimeout(context.Background(), *warmup+*duration+5*time.Minute)
	defer cancel()

	e, err := embedetcd.Start(embedetcd.Local("loadtest", dir), 30*time.Second)
	if err != nil {
		return r, err
	}
	defer e.Close()
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{e.Clients[0].Addr().String()},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return r, err
	}
	defer client.Close()

	var appErrors, aborted atomic.Int64
	counts := &countingStore{store: s.new(client)}
	sm := exampleapp.NewSessionManager(counts, *idle, *lifetime)
	sm.ErrorFunc = func(w http.ResponseWriter, r *http.Request, err error) {
		// wrk closes its connections when its time is up: the requests
		// then in flight end with their context canceled.
		if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
			aborted.Add(1)
			http.Error(w, "request canceled", http.StatusServiceUnavailable)
			return
		}
		if appErrors.Add(1) == 1 {
			log.Printf("%s: first store error: %v", s.name, err)
		}
		http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return r, err
	}
	app := exampleapp.New(sm)
	var inFlight atomic.Int64
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inFlight.Add(1)
		defer inFlight.Add(-1)
		app.ServeHTTP(w, r)
	})
	// settle waits until the requests wrk left behind when it stopped
	// have ended, so that they count in no later figure.
	settle := func() error {
		for deadline := time.Now().Add(30 * time.Second); inFlight.Load() > 0; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				return fmt.Errorf("%d requests still running 30s after wrk ended", inFlight.Load())
			}
		}
		return nil
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		srv.Shutdown(context.Background())
		<-served
	}()
	target := "http://" + ln.Addr().String() + *path

	cookies, err := newSessions(ctx, "http://"+ln.Addr().String()+*newSession, *sessions)
	if err != nil {
		return r, err
	}
	cookieFile := filepath.Join(filepath.Dir(script), s.name+".cookies")
	if err := os.WriteFile(cookieFile, []byte(strings.Join(cookies, "\n")+"\n"), 0o644); err != nil {
		return r, err
	}

	fmt.Printf("== %s: %d sessions, warm-up %v\n", s.name, len(cookies), *warmup)
	if _, err := runWrk(ctx, wrk, script, cookieFile, target, *warmup); err != nil {
		return r, fmt.Errorf("warm-up: %w", err)
	}
	if err := settle(); err != nil {
		return r, err
	}
	leasesBefore, err := countLeases(ctx, client)
	if err != nil {
		return r, err
	}
	appErrors.Store(0)
	aborted.Store(0)
	counts.reset()
	out, err := runWrk(ctx, wrk, script, cookieFile, target, *duration)
	if err != nil {
		return r, err
	}
	if err := settle(); err != nil {
		return r, err
	}
	os.Stdout.Write(out)
	if r.wrk, err = parseWrk(out); err != nil {
		return r, err
	}
	r.appErrors, r.aborted = appErrors.Load(), aborted.Load()
	r.hits, r.misses, r.commits = counts.hits.Load(), counts.misses.Load(), counts.commits.Load()

	leasesAfter, err := countLeases(ctx, client)
	if err != nil {
		return r, err
	}
	r.leases = leasesAfter - leasesBefore
	keys, err := client.Get(ctx, etcdstore.DefaultPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return r, err
	}
	r.keys = keys.Count
	st, err := client.Status(ctx, client.Endpoints()[0])
	if err != nil {
		return r, err
	}
	r.dbSize, r.dbSizeInUse = st.DbSize, st.DbSizeInUse
	return r, nil
}

// newSessions makes n requests to target without a cookie and returns the
// session cookie each was given, as "name=token". target must put data in
// the session, or SCS starts none.
func newSessions(ctx context.Context, target string, n int) ([]string, error) {
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 32},
	}
	defer client.CloseIdleConnections()
	cookies := make([]string, n)
	var next atomic.Int64
	g, ctx := errgroup.WithContext(ctx)
	for range 32 {
		g.Go(func() error {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
				if err != nil {
					return err
				}
				resp, err := client.Do(req)
				if err != nil {
					return err
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("new session: GET %s: %s", target, resp.Status)
				}
				for _, c := range resp.Cookies() {
					if c.Name == "session" && c.Value != "" {
						cookies[i] = c.Name + "=" + c.Value
					}
				}
				if cookies[i] == "" {
					return fmt.Errorf("new session: GET %s set no session cookie", target)
				}
			}
			return nil
		})
	}
	return cookies, g.Wait()
}

func countLeases(ctx context.Context, client *clientv3.Client) (int, error) {
	resp, err := client.Leases(ctx)
	if err != nil {
		return 0, fmt.Errorf("list leases: %w", err)
	}
	return len(resp.Leases), nil
}

// findWrk returns the path of wrk, installing Debian's package when it is
// missing.
func findWrk() (string, error) {
	if p, err := exec.LookPath("wrk"); err == nil {
		return p, nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return "", errors.New("wrk is not installed and there is no apt-get to install it: install wrk")
	}
	log.Print("wrk is missing: apt-get install -y wrk")
	install := func() error {
		cmd := exec.Command("apt-get", "install", "-y", "-q", "wrk")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		return cmd.Run()
	}
	if err := install(); err != nil {
		// The package lists may be missing or stale.
		update := exec.Command("apt-get", "update", "-q")
		update.Stdout, update.Stderr = os.Stderr, os.Stderr
		if err := update.Run(); err != nil {
			return "", fmt.Errorf("apt-get update: %w", err)
		}
		if err := install(); err != nil {
			return "", fmt.Errorf("apt-get install wrk: %w", err)
		}
	}
	return exec.LookPath("wrk")
}

// runWrk runs wrk against target for d and returns its output.
func runWrk(ctx context.Context, wrk, script, cookieFile, target string, d time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, d+time.Minute)
	defer cancel()
	secs := strconv.Itoa(int((d + time.Second - 1) / time.Second))
	cmd := exec.CommandContext(ctx, wrk,
		"-d", secs+"s",
		"-c", strconv.Itoa(*connections),
		"-t", strconv.Itoa(*threads),
		"--timeout", "10s",
		"--latency",
		"-s", script,
		target)
	cmd.Env = append(os.Environ(), "LOADTEST_COOKIES="+cookieFile)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("wrk: %w: %s", err, stderr.Bytes())
	}
	return out, nil
}

// wrkResult holds the figures of wrk's --latency output.
type wrkResult struct {
	requestsPerSec float64
	percentiles    map[string]string // "50%" -> "1.23ms"
	non2xx         int
	socketErrors   string // empty when there were none
}

var wrkPercentiles = []string{"50%", "75%", "90%", "99%"}

func parseWrk(out []byte) (wrkResult, error) {
	r := wrkResult{percentiles: make(map[string]string)}
	found := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "Requests/sec:":
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				return r, fmt.Errorf("wrk output: %q: %w", sc.Text(), err)
			}
			r.requestsPerSec, found = v, true
		case len(f) == 2 && strings.HasSuffix(f[0], "%"):
			r.percentiles[f[0]] = f[1]
		case strings.HasPrefix(strings.TrimSpace(sc.Text()), "Non-2xx or 3xx responses:"):
			n, err := strconv.Atoi(f[len(f)-1])
			if err != nil {
				return r, fmt.Errorf("wrk output: %q: %w", sc.Text(), err)
			}
			r.non2xx = n
		case len(f) > 0 && f[0] == "Socket":
			r.socketErrors = strings.TrimSpace(sc.Text())
		}
	}
	if !found {
		return r, fmt.Errorf("no Requests/sec in wrk output:\n%s", out)
	}
	return r, nil
}

func report(w io.Writer, results []result) {
	fmt.Fprintf(w, "\nwrk -d %v -c %d -t %d --latency, %d sessions, IdleTimeout %v, GET %s\n", *duration, *connections, *threads, *sessions, *idle, *path)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "store\treq/s\t")
	for _, p := range wrkPercentiles {
		fmt.Fprintf(tw, "p%s\t", strings.TrimSuffix(p, "%"))
	}
	fmt.Fprint(tw, "errors\tcommits\tleases granted\tleases/1k commits\tdb MB\tdb in use MB\t\n")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%.0f\t", r.store, r.wrk.requestsPerSec)
		for _, p := range wrkPercentiles {
			fmt.Fprintf(tw, "%s\t", r.wrk.percentiles[p])
		}
		fmt.Fprintf(tw, "%d\t%d\t%d\t%.1f\t%.1f\t%.1f\t\n", int64(r.wrk.non2xx)+r.appErrors, r.commits, r.leases,
			float64(r.leases)*1000/float64(max(r.commits, 1)), float64(r.dbSize)/(1<<20), float64(r.dbSizeInUse)/(1<<20))
	}
	tw.Flush()
	perSec := make(map[string]float64)
	for _, r := range results {
		perSec[r.store] = r.wrk.requestsPerSec
	}
	if perSec["naive"] > 0 {
		fmt.Fprintf(w, "etcdstore/naive throughput: %.2fx\n", perSec["etcdstore"]/perSec["naive"])
	}
}
