// Command etcdstore is an operator's tool for the sessions that
// github.com/etcdstore/etcdstore keeps in etcd: count and list them, log a
// user or everyone out, rewrite them under a new encryption key, and
// check the principal index, the compactor, the read cache and the etcd
// versions.
//
//	go install github.com/etcdstore/etcdstore/cmd/etcdstore@latest
//	etcdstore count -etcd http://127.0.0.1:2379
//	etcdstore ls -principal alice
//	etcdstore logout -principal alice
//	etcdstore logout -all -dry-run
//	etcdstore reseal -keys keys.txt
//	etcdstore check -fix
//
// Run etcdstore -h for the flags and exit codes; docs/operator.md shows
// each command with its output.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, nil)
	stop()
	os.Exit(code)
}
