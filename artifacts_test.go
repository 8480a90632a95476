//go:build go1.26

package etcdstore

import "testing"

// artifactDir is t.ArtifactDir: a directory for what a failed test
// leaves to look at, kept when go test runs with -artifacts, as
// artifactKept says. Go 1.25 has no ArtifactDir: artifacts_go125_test.go.
func artifactDir(t *testing.T) string { return t.ArtifactDir() }

const artifactKept = "kept with go test -artifacts"
