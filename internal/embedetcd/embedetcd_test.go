package embedetcd

import (
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestLocalCompacts: the member Local configures runs with periodic
// auto-compaction and the quota, as etcd reads them.
func TestLocalCompacts(t *testing.T) {
	cfg := Local("default", t.TempDir())
	e, err := Start(cfg, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	sc := e.Server.Cfg
	if cfg.AutoCompactionMode != embed.CompactorModePeriodic || sc.AutoCompactionRetention != CompactionRetention {
		t.Errorf("auto-compaction %q %v, want %q %v", cfg.AutoCompactionMode, sc.AutoCompactionRetention, embed.CompactorModePeriodic, CompactionRetention)
	}
	if sc.QuotaBackendBytes != QuotaBytes {
		t.Errorf("quota %d bytes, want %d", sc.QuotaBackendBytes, QuotaBytes)
	}
}
