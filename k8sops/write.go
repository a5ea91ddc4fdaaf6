package k8sops

import (
	"context"
	"errors"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

// write passes one Kubernetes write through the gate. send makes the request with the
// dryRun option it is given: none in a real run; in a dry run, dryRun: All (a server-side
// dry-run), so the API server authenticates, authorizes, admits and validates the request
// (an eviction also against the disruption budgets) and changes nothing. A dry-run
// request the API server refuses is logged as "DRY-RUN: <subject> would be refused now:
// <reason>" and is not an error, so the rehearsal goes on and says what the real run
// would meet. attrs are extra key/value pairs for the log lines.
func (o *Ops) write(ctx context.Context, action, subject string, send func(ctx context.Context, dryRun []string) error, attrs ...any) error {
	return o.Gate.Write(ctx, action,
		func(ctx context.Context) error { return send(ctx, nil) },
		func(ctx context.Context) error {
			err := send(ctx, []string{metav1.DryRunAll})
			var status apierrors.APIStatus
			if err != nil && errors.As(err, &status) {
				o.log().Warn("DRY-RUN: "+subject+" would be refused now: "+refusal(status), attrs...)
				return nil
			}
			return err
		}, attrs...)
}

// refusal is the API server's reason for refusing a request: its message and causes
// (for an eviction, the disruption budget's own words).
func refusal(s apierrors.APIStatus) string {
	st := s.Status()
	msg := strings.TrimSpace(st.Message)
	if st.Details != nil {
		for _, c := range st.Details.Causes {
			if c.Message != "" && !strings.Contains(msg, c.Message) {
				msg += " (" + c.Message + ")"
			}
		}
	}
	if msg == "" {
		msg = string(st.Reason)
	}
	return msg
}

// withDryRun adds the dryRun options to the request's URL. Options in a request body
// (an eviction's, a delete's) say it too; the URL is where the API server's audit log
// shows it, so a write that changed nothing is told from one that did.
func withDryRun(r *rest.Request, dryRun []string) *rest.Request {
	for _, d := range dryRun {
		r = r.Param("dryRun", d)
	}
	return r
}
