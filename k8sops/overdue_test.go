package k8sops

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestOverdue: kubectl's rule, whole seconds past the deletion time and strictly more
// than the timeout; a pod not being deleted, or a zero timeout, is never overdue.
func TestOverdue(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(ago time.Duration) *corev1.Pod {
		ts := metav1.NewTime(now.Add(-ago))
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{DeletionTimestamp: &ts}}
	}
	tests := []struct {
		name string
		pod  *corev1.Pod
		d    time.Duration
		want bool
	}{
		{"not being deleted", &corev1.Pod{}, time.Second, false},
		{"zero timeout waits", at(time.Hour), 0, false},
		{"exactly the timeout", at(5 * time.Minute), 5 * time.Minute, false},
		{"under a second more", at(5*time.Minute + 900*time.Millisecond), 5 * time.Minute, false},
		{"a second more", at(5*time.Minute + time.Second + time.Millisecond), 5 * time.Minute, true},
		{"deletion time still ahead (grace period)", at(-30 * time.Second), time.Second, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := overdue(tt.pod, tt.d, now); got != tt.want {
				t.Errorf("overdue = %v, want %v", got, tt.want)
			}
		})
	}
}
