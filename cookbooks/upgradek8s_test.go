package cookbooks

import (
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestUpgradeSkip: a node at the target is skipped, one older is upgraded, one newer or
// not at --src-version is bad input.
func TestUpgradeSkip(t *testing.T) {
	node := func(v string) corev1.Node {
		return corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "w-1"}, Status: corev1.NodeStatus{NodeInfo: corev1.NodeSystemInfo{KubeletVersion: v}}}
	}
	dst, _ := parseVersion("1.37.3")
	src, _ := parseVersion("v1.37.2")
	tests := []struct {
		have       string
		src        *version
		wantReason string
		wantBad    bool
	}{
		{"v1.37.3", nil, "already at v1.37.3", false},
		{"v1.37.2", nil, "", false},
		{"v1.36.9", nil, "", false},
		{"v1.37.2", &src, "", false},
		{"v1.36.9", &src, "", true},
		{"v1.38.0", nil, "", true},
		{"garbage", nil, "", true},
	}
	for _, tt := range tests {
		u := &upgrader{dst: dst, src: tt.src}
		reason, err := u.skip(node(tt.have))
		var in *InputError
		if (err != nil) != tt.wantBad || (err != nil && !errors.As(err, &in)) || !strings.Contains(reason, tt.wantReason) || (tt.wantReason == "") != (reason == "") {
			t.Errorf("kubelet %s (src %v): reason %q, err %v; want reason ~%q, bad input %v", tt.have, tt.src, reason, err, tt.wantReason, tt.wantBad)
		}
	}
	if _, err := parseVersion("1.37"); err == nil {
		t.Error("1.37 parsed as a version")
	}
}
