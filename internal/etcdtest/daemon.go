package etcdtest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Real etcd daemons: etcd server processes of other versions than the
// embedded one, for the tests of what differs between versions (auth
// tokens: etcd 3.4 refuses an expired token's login, later ones do not).

// DaemonsEnv names the environment variable that lists etcd server
// binaries, separated by ':', for the tests that start real etcd
// daemons. Unset, they run /usr/bin/etcd (Debian's etcd-server, 3.4)
// when it is installed, and are skipped when it is not.
const DaemonsEnv = "ETCDSTORE_TEST_ETCD_BINARIES"

// debianEtcd is where Debian's etcd-server package installs etcd.
const debianEtcd = "/usr/bin/etcd"

// Daemons returns the etcd server binaries of DaemonsEnv, or
// /usr/bin/etcd if it is unset and that exists. It skips the test when
// there are none, or when the tests run against a shared server (see
// EndpointsEnv), whose runs would repeat these.
func Daemons(tb testing.TB) []string {
	tb.Helper()
	if External() {
		tb.Skipf("starts etcd daemons of its own, and %s points at a shared server", EndpointsEnv)
	}
	var bins []string
	if env, ok := os.LookupEnv(DaemonsEnv); ok {
		for _, b := range strings.Split(env, ":") {
			if b = strings.TrimSpace(b); b != "" {
				bins = append(bins, b)
			}
		}
	} else if _, err := os.Stat(debianEtcd); err == nil {
		bins = []string{debianEtcd}
	}
	if len(bins) == 0 {
		tb.Skipf("no etcd server binary: set %s, or install Debian's etcd-server", DaemonsEnv)
	}
	return bins
}

// daemonStop bounds how long a daemon may take to stop after SIGTERM
// before it is killed.
const daemonStop = 10 * time.Second

// StartDaemon runs the etcd server binary bin as a single member on free
// loopback ports, its data and log in tb.TempDir(), with the extra flags,
// waits until it answers a read, and stops it when the test ends. It
// returns its client URL and the version it reports.
func StartDaemon(tb testing.TB, bin string, flags ...string) (endpoint, version string) {
	tb.Helper()
	dir := tb.TempDir()
	client, peer := freeURL(tb), freeURL(tb)
	args := append([]string{
		"--name", "default", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client.String(), "--advertise-client-urls", client.String(),
		"--listen-peer-urls", peer.String(), "--initial-advertise-peer-urls", peer.String(),
		"--initial-cluster", "default=" + peer.String(),
		"--logger", "zap", "--log-level", "warn",
	}, flags...)
	logFile, err := os.Create(filepath.Join(dir, "etcd.log"))
	if err != nil {
		tb.Fatalf("etcdtest: %v", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		tb.Fatalf("etcdtest: start %s: %v", bin, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logFile.Close()
		close(exited)
	}()
	tb.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(daemonStop):
			cmd.Process.Kill()
			<-exited
		}
	})
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{client.String()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		tb.Fatalf("etcdtest: client of %s: %v", bin, err)
	}
	defer c.Close()
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := c.Status(ctx, client.String())
		cancel()
		if err == nil {
			return client.String(), st.Version
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(logFile.Name())
			tb.Fatalf("etcdtest: %s exited before it answered; its log:\n%s", bin, log)
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("etcdtest: %s did not answer within %v: %v", bin, startTimeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
