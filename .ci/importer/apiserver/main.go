// Command apiserver stands for an app beside Kubernetes: it links
// k8s.io/apiserver's etcd storage (its etcd client, gRPC and
// OpenTelemetry) and SCS. .ci/importer-check makes it a module of its
// own, then adds the store to it (../store) and checks that no version
// it links changes.
package main

import (
	"fmt"

	"github.com/alexedwards/scs/v2"
	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	"k8s.io/apiserver/pkg/storage/storagebackend/factory"
)

var (
	client   *clientv3.Client
	sessions = scs.New()
)

func main() {
	cfg := storagebackend.NewDefaultConfig("/registry", nil)
	cfg.Transport.ServerList = []string{"http://127.0.0.1:2379"}
	check, err := factory.CreateHealthCheck(*cfg, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(check(), client != nil, sessions.Store != nil)
}
