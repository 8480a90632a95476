// Command client stands for a plain app on the etcd client and SCS.
// .ci/importer-check makes it a module of its own, then adds the store
// to it (../store) and checks that no version it links changes.
package main

import (
	"fmt"
	"time"

	"github.com/alexedwards/scs/v2"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var (
	client   *clientv3.Client
	sessions = scs.New()
)

func main() {
	var err error
	client, err = clientv3.New(clientv3.Config{
		Endpoints:   []string{"http://127.0.0.1:2379"},
		DialTimeout: 5 * time.Second,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()
	fmt.Println(sessions.Store != nil)
}
