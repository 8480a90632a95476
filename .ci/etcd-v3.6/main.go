// Command etcd is etcd's own server, v3.6.16, built from the Go module
// proxy, for etcdstore's tests against real etcd servers (see .ci/run).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
