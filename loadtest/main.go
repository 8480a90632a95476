// Command loadtest measures the example app (internal/exampleapp) under
// wrk, on loopback, with its sessions in each of these stores, and prints
// requests per second, latency percentiles and writes per request:
//
//	etcdstore            this store, as New makes it
//	etcdstore-unbatched  this store with WithBatching(false)
//	etcdstore-touch      this store with WithTouchInterval(IdleTimeout/2)
//	etcdstore-cache      this store with WithReadCache and the touch interval
//	naive                one new lease per commit, as
//	                     github.com/alexedwards/scs/etcdstore does
//	redis                a local redis-server with appendfsync everysec, and
//	                     a store doing what SCS's goredisstore does
//	                     (internal/redisstore): it acknowledges a write
//	                     before any fsync
//	redis-always         the same with appendfsync always: it acknowledges a
//	                     write after its fsync, as etcd does after a quorum's
//	memstore             SCS's memstore: no network, no durability, the
//	                     ceiling of what the app can serve
//
// With -path /get (the default) a request that changes nothing commits its
// session only for IdleTimeout; with -path /count every request changes
// its session (a counter), so every commit writes.
//
// Each measured run starts its backend afresh: an embedded etcd member
// with fsync on, as in production, or a redis-server on a loopback port.
// It serves the app with an SCS IdleTimeout, so that every request loads
// and commits its session, starts -sessions sessions, each with the
// requests of -new (by default a login and a message: two values, which
// SCS's GobCodec encodes in random order), and runs wrk against -path for
// -warmup and then for -d, with -c connections on -t threads. A Lua script
// hands each request the cookie of one of the sessions in turn. Afterwards
// it checks that no request failed, that every request found its
// session, and that the backend holds exactly the sessions started.
//
// The stores run in -rounds rounds, each round in another order, so that
// load from elsewhere falls on all of them alike; the summary gives each
// figure's median over the rounds. It installs wrk and redis-server with
// apt-get when they are missing.
//
// Usage:
//
//	go run ./loadtest [-d 10s] [-c 32] [-t 2] [-sessions 1000] [-rounds 3] [-stores etcdstore,redis]
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
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/alexedwards/scs/v2"
	"github.com/alexedwards/scs/v2/memstore"
	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/embedetcd"
	"github.com/etcdstore/etcdstore/internal/exampleapp"
	"github.com/etcdstore/etcdstore/internal/naive"
	"github.com/etcdstore/etcdstore/loadtest/internal/redisstore"
	"github.com/redis/go-redis/v9"
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
	newSession  = flag.String("new", "/login?name=loadtest,/put", "comma-separated app paths, requested in order, that start a session and put data in it")
	idle        = flag.Duration("idle", 20*time.Minute, "SCS IdleTimeout: with it every request commits its session")
	lifetime    = flag.Duration("lifetime", 24*time.Hour, "SCS Lifetime")
	rounds      = flag.Int("rounds", 3, "rounds of runs, each store once a round, in another order each round")
	cpuProfile  = flag.String("cpuprofile", "", "write a CPU profile of the measured runs, app and embedded etcd alike, to `file`")
	only        = flag.String("stores", "", "comma-separated stores to measure (default: etcdstore,etcdstore-touch,etcdstore-cache,naive,redis; also etcdstore-unbatched, redis-always, memstore)")
)

// backendKind is what a store keeps its sessions in.
type backendKind int

const (
	onEtcd        backendKind = iota
	onRedis                   // appendfsync everysec
	onRedisAlways             // appendfsync always
	inMemory                  // the process's memory
)

// store is one session store under test, on a backend of its own.
type store struct {
	name    string
	backend backendKind
	new     func(*clientv3.Client, *redis.Client) scs.CtxStore
}

var stores = []store{
	{"etcdstore", onEtcd, func(c *clientv3.Client, _ *redis.Client) scs.CtxStore { return etcdstore.New(c) }},
	{"etcdstore-touch", onEtcd, func(c *clientv3.Client, _ *redis.Client) scs.CtxStore {
		return etcdstore.New(c, etcdstore.WithTouchInterval(*idle/2))
	}},
	{"etcdstore-cache", onEtcd, func(c *clientv3.Client, _ *redis.Client) scs.CtxStore {
		return etcdstore.New(c, etcdstore.WithReadCache(), etcdstore.WithTouchInterval(*idle/2))
	}},
	{"naive", onEtcd, func(c *clientv3.Client, _ *redis.Client) scs.CtxStore {
		return &naive.Store{Client: c, Prefix: etcdstore.DefaultPrefix}
	}},
	{"redis", onRedis, func(_ *clientv3.Client, r *redis.Client) scs.CtxStore {
		return &redisstore.Store{Client: r, Prefix: etcdstore.DefaultPrefix}
	}},
}

// moreStores are measured when -stores names them.
var moreStores = []store{
	{"etcdstore-unbatched", onEtcd, func(c *clientv3.Client, _ *redis.Client) scs.CtxStore {
		return etcdstore.New(c, etcdstore.WithBatching(false))
	}},
	{"redis-always", onRedisAlways, func(_ *clientv3.Client, r *redis.Client) scs.CtxStore {
		return &redisstore.Store{Client: r, Prefix: etcdstore.DefaultPrefix}
	}},
	{"memstore", inMemory, func(*clientv3.Client, *redis.Client) scs.CtxStore { return memStore{memstore.New()} }},
}

// result is what one measured run gave.
type result struct {
	store     string
	wrk       wrkResult
	appErrors int64 // requests the app answered 500 because of the store
	aborted   int64 // requests wrk closed while they ran, at its end
	hits      int64 // finds that found a session during the measured run
	misses    int64 // finds that found none
	commits   int64 // commits that reached the store during the measured run
	// etcd only:
	writes      int64 // etcd revisions during the measured run: keys written or deleted
	leases      int   // leases granted during the measured run
	dbSize      int64 // bytes
	dbSizeInUse int64 // bytes
	keys        int64 // session keys after the run
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
	chosen := stores
	if *only != "" {
		chosen = nil
		all := append(slices.Clone(stores), moreStores...)
		for _, name := range strings.Split(*only, ",") {
			i := slices.IndexFunc(all, func(s store) bool { return s.name == name })
			if i < 0 {
				return fmt.Errorf("-stores: no store %q", name)
			}
			chosen = append(chosen, all[i])
		}
	}
	wrk, err := findTool("wrk", "wrk")
	if err != nil {
		return err
	}
	var redisServer string
	if slices.ContainsFunc(chosen, func(s store) bool { return s.backend == onRedis || s.backend == onRedisAlways }) {
		if redisServer, err = findTool("redis-server", "redis-server"); err != nil {
			return err
		}
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

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	results := make(map[string][]result)
	for round := range max(*rounds, 1) {
		for k := range chosen {
			s := chosen[(round+k)%len(chosen)]
			dir := filepath.Join(tmp, fmt.Sprintf("%s-%d", s.name, round))
			fmt.Printf("== round %d: %s\n", round+1, s.name)
			r, err := measure(wrk, redisServer, script, dir, s)
			if err != nil {
				return fmt.Errorf("round %d: %s: %w", round+1, s.name, err)
			}
			if err := r.check(); err != nil {
				return fmt.Errorf("round %d: %w", round+1, err)
			}
			results[s.name] = append(results[s.name], r)
			report(os.Stdout, []result{r})
		}
	}
	var medians []result
	for _, s := range chosen {
		medians = append(medians, median(results[s.name]))
	}
	fmt.Printf("\nmedians of %d rounds:\n", max(*rounds, 1))
	report(os.Stdout, medians)
	return nil
}

// check returns an error if a request failed, a request found no
// session, or the backend does not hold exactly the sessions started.
func (r result) check() error {
	if r.wrk.non2xx > 0 || r.wrk.socketErrors != "" || r.appErrors > 0 {
		return fmt.Errorf("%s: requests failed: %d non-2xx, %d store errors, socket errors %q", r.store, r.wrk.non2xx, r.appErrors, r.wrk.socketErrors)
	}
	if r.misses > 0 || r.hits == 0 {
		return fmt.Errorf("%s: %d requests found their session, %d did not", r.store, r.hits, r.misses)
	}
	if r.keys != int64(*sessions) {
		return fmt.Errorf("%s: %d session keys after the run, want %d", r.store, r.keys, *sessions)
	}
	return nil
}

// backend is what a store runs on: an embedded etcd member or a
// redis-server, started afresh for one run.
type backend struct {
	etcd  *clientv3.Client
	redis *redis.Client
	stop  func()
}

// startBackend starts the backend of s with its data in dir.
func startBackend(ctx context.Context, redisServer, dir string, s store) (*backend, error) {
	switch s.backend {
	case inMemory:
		return &backend{stop: func() {}}, nil
	case onRedis, onRedisAlways:
		fsync := "everysec"
		if s.backend == onRedisAlways {
			fsync = "always"
		}
		addr, stop, err := startRedis(ctx, redisServer, dir, fsync)
		if err != nil {
			return nil, err
		}
		rc := redis.NewClient(&redis.Options{Addr: addr})
		return &backend{redis: rc, stop: func() { rc.Close(); stop() }}, nil
	}
	e, err := embedetcd.Start(embedetcd.Local("loadtest", dir), 30*time.Second)
	if err != nil {
		return nil, err
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{e.Clients[0].Addr().String()},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		e.Close()
		return nil, err
	}
	return &backend{etcd: client, stop: func() { client.Close(); e.Close() }}, nil
}

// startRedis starts redis-server on a free loopback port with its data in
// dir, persisting as a production Redis would (an append-only file,
// fsynced as fsync says: everysec or always), and waits until it answers.
func startRedis(ctx context.Context, redisServer, dir, fsync string) (addr string, stop func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr = l.Addr().String()
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	cmd := exec.Command(redisServer,
		"--bind", "127.0.0.1", "--port", port, "--dir", dir,
		"--save", "", "--appendonly", "yes", "--appendfsync", fsync,
		"--daemonize", "no", "--loglevel", "warning",
		"--logfile", filepath.Join(dir, "redis.log"))
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("start redis-server: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop = func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	rc := redis.NewClient(&redis.Options{Addr: addr})
	defer rc.Close()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if err := rc.Ping(ctx).Err(); err == nil {
			return addr, stop, nil
		} else if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("redis-server on %s: %w", addr, err)
		}
	}
}

// measure runs the load test of one store on a fresh backend whose data
// lives in dir.
func measure(wrk, redisServer, script, dir string, s store) (result, error) {
	r := result{store: s.name}
	// Bounds every backend request and the whole run.
	ctx, cancel := context.WithTimeout(context.Background(), *warmup+*duration+5*time.Minute)
	defer cancel()

	b, err := startBackend(ctx, redisServer, dir, s)
	if err != nil {
		return r, err
	}
	defer b.stop()

	var appErrors, aborted atomic.Int64
	st := s.new(b.etcd, b.redis)
	if c, ok := st.(interface{ Close() error }); ok {
		defer c.Close() // the read cache's watch
	}
	if m, ok := st.(memStore); ok {
		defer m.StopCleanup()
	}
	counts := &countingStore{store: st}
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
	base := "http://" + ln.Addr().String()

	cookies, err := newSessions(ctx, base, strings.Split(*newSession, ","), *sessions)
	if err != nil {
		return r, err
	}
	cookieFile := filepath.Join(filepath.Dir(script), s.name+".cookies")
	if err := os.WriteFile(cookieFile, []byte(strings.Join(cookies, "\n")+"\n"), 0o644); err != nil {
		return r, err
	}

	if _, err := runWrk(ctx, wrk, script, cookieFile, base+*path, *warmup); err != nil {
		return r, fmt.Errorf("warm-up: %w", err)
	}
	if err := settle(); err != nil {
		return r, err
	}
	var before etcdState
	if b.etcd != nil {
		if before, err = readEtcdState(ctx, b.etcd); err != nil {
			return r, err
		}
	}
	appErrors.Store(0)
	aborted.Store(0)
	counts.reset()
	out, err := runWrk(ctx, wrk, script, cookieFile, base+*path, *duration)
	if err != nil {
		return r, err
	}
	if err := settle(); err != nil {
		return r, err
	}
	if r.wrk, err = parseWrk(out); err != nil {
		return r, err
	}
	r.appErrors, r.aborted = appErrors.Load(), aborted.Load()
	r.hits, r.misses, r.commits = counts.hits.Load(), counts.misses.Load(), counts.commits.Load()

	if b.redis != nil {
		r.keys, err = b.redis.DBSize(ctx).Result()
		return r, err
	}
	if b.etcd == nil {
		all, err := st.(memStore).All()
		r.keys = int64(len(all))
		return r, err
	}
	after, err := readEtcdState(ctx, b.etcd)
	if err != nil {
		return r, err
	}
	r.writes = after.revision - before.revision - 1 // less readEtcdState's own
	r.leases = after.leases - before.leases
	r.keys, r.dbSize, r.dbSizeInUse = after.keys, after.dbSize, after.dbSizeInUse
	return r, nil
}

// etcdState is what the load test reads of an etcd member around a run.
type etcdState struct {
	revision            int64 // after the state was read
	leases              int
	keys                int64 // under the store's prefix
	dbSize, dbSizeInUse int64 // bytes
}

// readEtcdState reads the member's state. It writes one key, so that the
// revision it returns counts every write before it.
func readEtcdState(ctx context.Context, client *clientv3.Client) (etcdState, error) {
	var st etcdState
	resp, err := client.Put(ctx, "loadtest:revision", "")
	if err != nil {
		return st, err
	}
	st.revision = resp.Header.Revision
	leases, err := client.Leases(ctx)
	if err != nil {
		return st, fmt.Errorf("list leases: %w", err)
	}
	st.leases = len(leases.Leases)
	keys, err := client.Get(ctx, etcdstore.DefaultPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return st, err
	}
	st.keys = keys.Count
	status, err := client.Status(ctx, client.Endpoints()[0])
	if err != nil {
		return st, err
	}
	st.dbSize, st.dbSizeInUse = status.DbSize, status.DbSizeInUse
	return st, nil
}

// newSessions starts n sessions, each with a request to each of paths in
// turn, under base, carrying the cookies set so far, and returns each
// session's cookie as "name=token". The paths must put data in the
// session, or SCS starts none.
func newSessions(ctx context.Context, base string, paths []string, n int) ([]string, error) {
	transport := &http.Transport{MaxIdleConnsPerHost: 32}
	defer transport.CloseIdleConnections()
	cookies := make([]string, n)
	var next atomic.Int64
	g, ctx := errgroup.WithContext(ctx)
	for range 32 {
		g.Go(func() error {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				jar, err := cookiejar.New(nil)
				if err != nil {
					return err
				}
				client := &http.Client{Timeout: 10 * time.Second, Transport: transport, Jar: jar}
				for _, p := range paths {
					req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+p, nil)
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
						return fmt.Errorf("new session: GET %s: %s", p, resp.Status)
					}
				}
				u, err := url.Parse(base)
				if err != nil {
					return err
				}
				for _, c := range jar.Cookies(u) {
					if c.Name == "session" && c.Value != "" {
						cookies[i] = c.Name + "=" + c.Value
					}
				}
				if cookies[i] == "" {
					return fmt.Errorf("new session: GET %s set no session cookie", strings.Join(paths, ", "))
				}
			}
			return nil
		})
	}
	return cookies, g.Wait()
}

// findTool returns the path of the command name, installing Debian's
// package pkg when it is missing.
func findTool(name, pkg string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return "", fmt.Errorf("%s is not installed and there is no apt-get to install it: install %s", name, pkg)
	}
	log.Printf("%s is missing: apt-get install -y %s", name, pkg)
	install := func() error {
		cmd := exec.Command("apt-get", "install", "-y", "-q", pkg)
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
			return "", fmt.Errorf("apt-get install %s: %w", pkg, err)
		}
	}
	return exec.LookPath(name)
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
	requests       int64
	requestsPerSec float64
	percentiles    map[string]time.Duration // "50%" -> 1.23ms
	non2xx         int
	socketErrors   string // empty when there were none
}

var wrkPercentiles = []string{"50%", "75%", "90%", "99%"}

func parseWrk(out []byte) (wrkResult, error) {
	r := wrkResult{percentiles: make(map[string]time.Duration)}
	found := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		var err error
		switch {
		case len(f) == 2 && f[0] == "Requests/sec:":
			r.requestsPerSec, err = strconv.ParseFloat(f[1], 64)
			found = true
		case len(f) > 2 && f[1] == "requests" && f[2] == "in":
			r.requests, err = strconv.ParseInt(f[0], 10, 64)
		case len(f) == 2 && strings.HasSuffix(f[0], "%"):
			r.percentiles[f[0]], err = time.ParseDuration(f[1])
		case strings.HasPrefix(strings.TrimSpace(sc.Text()), "Non-2xx or 3xx responses:"):
			r.non2xx, err = strconv.Atoi(f[len(f)-1])
		case len(f) > 0 && f[0] == "Socket":
			r.socketErrors = strings.TrimSpace(sc.Text())
		}
		if err != nil {
			return r, fmt.Errorf("wrk output: %q: %w", sc.Text(), err)
		}
	}
	if !found || r.requests == 0 {
		return r, fmt.Errorf("no request count or Requests/sec in wrk output:\n%s", out)
	}
	return r, nil
}

// median returns a result whose every figure is the median of that
// figure over rs (the upper median for an even count).
func median(rs []result) result {
	m := result{store: rs[0].store, wrk: wrkResult{percentiles: make(map[string]time.Duration)}}
	mid := func(get func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = get(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	m.wrk.requests = int64(mid(func(r result) float64 { return float64(r.wrk.requests) }))
	m.wrk.requestsPerSec = mid(func(r result) float64 { return r.wrk.requestsPerSec })
	for _, p := range wrkPercentiles {
		m.wrk.percentiles[p] = time.Duration(mid(func(r result) float64 { return float64(r.wrk.percentiles[p]) }))
	}
	// Per-request figures are medians of the ratios, scaled back by the
	// median request count.
	perReq := func(get func(result) float64) int64 {
		return int64(mid(func(r result) float64 { return get(r) / float64(r.wrk.requests) }) * float64(m.wrk.requests))
	}
	m.commits = perReq(func(r result) float64 { return float64(r.commits) })
	m.writes = perReq(func(r result) float64 { return float64(r.writes) })
	m.leases = int(mid(func(r result) float64 { return float64(r.leases) }))
	m.dbSize = int64(mid(func(r result) float64 { return float64(r.dbSize) }))
	m.dbSizeInUse = int64(mid(func(r result) float64 { return float64(r.dbSizeInUse) }))
	m.keys = rs[0].keys
	return m
}

func report(w io.Writer, results []result) {
	fmt.Fprintf(w, "\nwrk -d %v -c %d -t %d --latency, %d sessions, IdleTimeout %v, GET %s\n", *duration, *connections, *threads, *sessions, *idle, *path)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "store\treq/s\t")
	for _, p := range wrkPercentiles {
		fmt.Fprintf(tw, "p%s\t", strings.TrimSuffix(p, "%"))
	}
	fmt.Fprint(tw, "requests\tcommits/req\tetcd writes\tetcd writes/req\tleases granted\tdb MB\tdb in use MB\t\n")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%.0f\t", r.store, r.wrk.requestsPerSec)
		for _, p := range wrkPercentiles {
			fmt.Fprintf(tw, "%s\t", r.wrk.percentiles[p].Round(10*time.Microsecond))
		}
		n := float64(max(r.wrk.requests, 1))
		fmt.Fprintf(tw, "%d\t%.3f\t", r.wrk.requests, float64(r.commits)/n)
		if r.dbSize == 0 { // not on etcd
			fmt.Fprint(tw, "-\t-\t-\t-\t-\t\n")
			continue
		}
		fmt.Fprintf(tw, "%d\t%.4f\t%d\t%.1f\t%.1f\t\n", r.writes, float64(r.writes)/n, r.leases,
			float64(r.dbSize)/(1<<20), float64(r.dbSizeInUse)/(1<<20))
	}
	tw.Flush()
	perSec := make(map[string]float64)
	for _, r := range results {
		perSec[r.store] = r.wrk.requestsPerSec
	}
	for _, s := range []string{"etcdstore", "etcdstore-touch", "etcdstore-cache"} {
		for _, base := range []string{"etcdstore", "naive", "redis"} {
			if s != base && perSec[s] > 0 && perSec[base] > 0 {
				fmt.Fprintf(w, "%s/%s throughput: %.2fx\n", s, base, perSec[s]/perSec[base])
			}
		}
	}
}

// memStore is SCS's memstore with the context methods that SCS prefers,
// which ignore the context as the memstore does.
type memStore struct{ *memstore.MemStore }

func (m memStore) FindCtx(_ context.Context, token string) ([]byte, bool, error) {
	return m.Find(token)
}

func (m memStore) CommitCtx(_ context.Context, token string, b []byte, expiry time.Time) error {
	return m.Commit(token, b, expiry)
}

func (m memStore) DeleteCtx(_ context.Context, token string) error { return m.Delete(token) }
