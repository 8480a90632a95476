package main

// The store, added to an app of ../apiserver or ../client.

import "github.com/etcdstore/etcdstore"

func init() { sessions.Store = etcdstore.New(client) }
