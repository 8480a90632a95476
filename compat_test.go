package etcdstore

import (
	"reflect"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// pbCompare is the pb.Compare that c sends, on every etcd client from
// go.mod's floor (3.5.21) on: from 3.7, Cmp is opaque and GetCompare
// says; before, Cmp is a pb.Compare by another name, converted here by
// reflection since the conversion does not build with 3.7.
func pbCompare(c clientv3.Cmp) *pb.Compare {
	if g, ok := any(&c).(interface{ GetCompare() *pb.Compare }); ok {
		return g.GetCompare()
	}
	return reflect.ValueOf(&c).Convert(reflect.TypeFor[*pb.Compare]()).Interface().(*pb.Compare)
}
