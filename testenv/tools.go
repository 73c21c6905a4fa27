//go:build tools

// Package testenv pins the Kubernetes control plane that devheal's end-to-end tests run
// against. Nothing here is product code: `go build` of the imported main packages produces
// kube-apiserver, kube-controller-manager, kube-scheduler and etcd at one release.
package testenv

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
