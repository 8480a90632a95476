//go:build !go1.26

package etcdstore

import (
	"os"
	"strings"
	"testing"
)

// artifactDir is a new directory under the system's temporary directory,
// named after the test and never removed: Go 1.25 has no t.ArtifactDir
// (artifacts_test.go).
func artifactDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "etcdstore-"+strings.ReplaceAll(t.Name(), "/", "-")+"-")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

const artifactKept = "kept"
