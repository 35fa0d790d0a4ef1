package workers

import (
	"testing"
	"time"
)

// With more than one replica, reads of the streams go to their leaders:
// a follower answering a direct get may not have the newest message.
func TestStreamConfigsDirectGetsOnlyWithOneReplica(t *testing.T) {
	for _, tt := range []struct {
		replicas, want int
		direct         bool
	}{{0, 1, true}, {1, 1, true}, {3, 3, false}, {5, 5, false}} {
		for _, cfg := range streamConfigs(tt.replicas, time.Hour) {
			if cfg.Replicas != tt.want || cfg.AllowDirect != tt.direct {
				t.Errorf("--replicas %d: %s has %d replicas, direct gets %v; want %d, %v",
					tt.replicas, cfg.Name, cfg.Replicas, cfg.AllowDirect, tt.want, tt.direct)
			}
		}
	}
}
