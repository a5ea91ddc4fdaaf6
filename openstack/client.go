// Package openstack is the cloud half of the node cookbooks, on gophercloud v2: clouds.yaml
// authentication with re-authentication, retries of transient failures, lookups that
// must find exactly one match, role naming, idempotent server creation, waits, reboots
// and the SSH host keys a new server prints on its console. Every write goes through a
// dryrun.Gate.
package openstack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	osconfig "github.com/gophercloud/gophercloud/v2/openstack/config"
	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"

	"example.com/cookbook/dryrun"
)

// Options configure a Client.
type Options struct {
	// Cloud is the clouds.yaml entry; empty uses $OS_CLOUD.
	Cloud string
	// CloudsFile is an explicit clouds.yaml; empty uses the usual search path
	// (./clouds.yaml, ~/.config/openstack/clouds.yaml, /etc/openstack/clouds.yaml).
	CloudsFile string
	// Project overrides the project of the clouds.yaml entry.
	Project string
	// Gate is where writes pass; nil performs them.
	Gate *dryrun.Gate
	// Log receives retries and waits; nil discards.
	Log *slog.Logger
	// Retries is how many times a transient failure is retried; 6 if zero.
	Retries int
	// BaseBackoff is the first retry's delay (doubling, capped at 10s, with jitter);
	// 200ms if zero.
	BaseBackoff time.Duration
	// PollInterval is how often waits look at a server; 2s if zero.
	PollInterval time.Duration
	// ReportEvery is how often a long wait logs what it waits for and since when; 30s if
	// zero.
	ReportEvery time.Duration
	// HTTPTimeout bounds one HTTP request; 60s if zero.
	HTTPTimeout time.Duration
}

// Client talks to one OpenStack project.
type Client struct {
	compute, image, network *gophercloud.ServiceClient
	gate                    *dryrun.Gate
	log                     *slog.Logger
	opts                    Options
}

// New authenticates with the clouds.yaml entry and returns a client. Secrets from
// clouds.yaml never reach a log line or an error.
func New(ctx context.Context, opts Options) (*Client, error) {
	if opts.Retries == 0 {
		opts.Retries = 6
	}
	if opts.BaseBackoff == 0 {
		opts.BaseBackoff = 200 * time.Millisecond
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = 2 * time.Second
	}
	if opts.ReportEvery == 0 {
		opts.ReportEvery = 30 * time.Second
	}
	if opts.HTTPTimeout == 0 {
		opts.HTTPTimeout = 60 * time.Second
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var parse []clouds.ParseOption
	if opts.Cloud != "" {
		parse = append(parse, clouds.WithCloudName(opts.Cloud))
	}
	if opts.CloudsFile != "" {
		parse = append(parse, clouds.WithLocations(opts.CloudsFile))
	}
	if opts.Project != "" {
		parse = append(parse, clouds.WithProjectName(opts.Project))
	}
	auth, endpoint, tlsConfig, err := clouds.Parse(parse...)
	if err != nil {
		return nil, fmt.Errorf("clouds.yaml: cloud %q: %w", opts.Cloud, err)
	}
	auth.AllowReauth = true
	httpClient := http.Client{Timeout: opts.HTTPTimeout}
	c := &Client{gate: opts.Gate, log: log, opts: opts}
	var provider *gophercloud.ProviderClient
	for attempt := 0; ; attempt++ {
		if tlsConfig != nil {
			provider, err = osconfig.NewProviderClient(ctx, auth, osconfig.WithHTTPClient(httpClient), osconfig.WithTLSConfig(tlsConfig))
		} else {
			provider, err = osconfig.NewProviderClient(ctx, auth, osconfig.WithHTTPClient(httpClient))
		}
		if err == nil || !transient(err) || attempt >= opts.Retries {
			break
		}
		if werr := c.backoff(ctx, "authenticate", attempt, err, 0); werr != nil {
			return nil, werr
		}
	}
	if err != nil {
		return nil, fmt.Errorf("authenticate to cloud %q: %w", opts.Cloud, redact(err))
	}
	provider.MaxBackoffRetries = uint(opts.Retries)
	provider.RetryBackoffFunc = func(ctx context.Context, respErr *gophercloud.ErrUnexpectedResponseCode, err error, n uint) error {
		var after time.Duration
		if s := respErr.ResponseHeader.Get("Retry-After"); s != "" {
			if secs, perr := strconv.Atoi(s); perr == nil {
				after = time.Duration(secs) * time.Second
			}
		}
		return c.backoff(ctx, respErr.Method+" "+respErr.URL, int(n)-1, err, after)
	}
	provider.RetryFunc = func(ctx context.Context, method, url string, _ *gophercloud.RequestOpts, err error, n uint) error {
		// A POST that creates something is never replayed blindly: a lost response
		// could make a second server. Callers look before they create again.
		if method == http.MethodPost && !strings.HasSuffix(url, "/action") {
			return err
		}
		if !transient(err) || int(n) > opts.Retries {
			return err
		}
		return c.backoff(ctx, method+" "+url, int(n)-1, err, 0)
	}
	if c.compute, err = openstack.NewComputeV2(provider, endpoint); err != nil {
		return nil, fmt.Errorf("compute endpoint: %w", err)
	}
	c.compute.Microversion = "2.79"
	if c.image, err = openstack.NewImageV2(provider, endpoint); err != nil {
		return nil, fmt.Errorf("image endpoint: %w", err)
	}
	if c.network, err = openstack.NewNetworkV2(provider, endpoint); err != nil {
		return nil, fmt.Errorf("network endpoint: %w", err)
	}
	return c, nil
}

// backoff waits before retry number attempt (0-based): capped exponential with jitter, or
// after if the server said so.
func (c *Client) backoff(ctx context.Context, what string, attempt int, err error, after time.Duration) error {
	d := after
	if d == 0 {
		d = c.opts.BaseBackoff << min(attempt, 6)
		if d > 10*time.Second {
			d = 10 * time.Second
		}
		d = d/2 + time.Duration(rand.Int63n(int64(d/2)+1))
	}
	c.log.Warn("transient failure, retrying", "request", what, "retry", attempt+1, "in", d.Round(time.Millisecond), "err", redact(err))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return errors.Join(err, ctx.Err())
	case <-t.C:
		return nil
	}
}

// transient reports whether err is worth retrying: 5xx, 429, connection failures and
// timeouts.
func transient(err error) bool {
	var code gophercloud.ErrUnexpectedResponseCode
	if errors.As(err, &code) {
		return code.Actual >= 500 || code.Actual == http.StatusTooManyRequests
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return true
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED)
}

// redact keeps tokens and passwords out of error text.
func redact(err error) error {
	if err == nil {
		return nil
	}
	s := err.Error()
	for _, k := range []string{`"password":`, `"secret":`, "X-Auth-Token"} {
		if i := strings.Index(s, k); i >= 0 {
			return errors.New(s[:i] + k + " [redacted]")
		}
	}
	return err
}

// apiMessage returns the message of an OpenStack error response ("Quota exceeded for
// instances: ...") or the error itself.
func apiMessage(err error) string {
	var code gophercloud.ErrUnexpectedResponseCode
	if !errors.As(err, &code) {
		return err.Error()
	}
	if msg := bodyMessage(code.Body); msg != "" {
		return fmt.Sprintf("%s (HTTP %d)", msg, code.Actual)
	}
	return fmt.Sprintf("HTTP %d from %s %s", code.Actual, code.Method, code.URL)
}

// bodyMessage decodes the message of an OpenStack error body, in any of the services'
// shapes: {"message": ...} (Glance), {"itemNotFound": {"code": 404, "message": ...}}
// (Nova), {"NeutronError": {"type": ..., "message": ...}}, {"error": {"message": ...}}
// (Keystone). It is "" when the body is not one of them.
func bodyMessage(body []byte) string {
	type withMessage struct {
		Message string `json:"message"`
	}
	var top withMessage
	if json.Unmarshal(body, &top) == nil && top.Message != "" {
		return top.Message
	}
	var wrapped map[string]json.RawMessage
	if json.Unmarshal(body, &wrapped) != nil {
		return ""
	}
	keys := make([]string, 0, len(wrapped))
	for k := range wrapped {
		keys = append(keys, k)
	}
	sort.Strings(keys) // one answer for a body with several
	for _, k := range keys {
		var inner withMessage
		if json.Unmarshal(wrapped[k], &inner) == nil && inner.Message != "" {
			return inner.Message
		}
	}
	return ""
}

// apiError is an OpenStack error shown by its API message.
type apiError struct {
	msg string
	err error
}

func (e *apiError) Error() string { return e.msg }
func (e *apiError) Unwrap() error { return e.err }

// wrap adds context and the API's message to err.
func wrap(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, &apiError{msg: redact(errors.New(apiMessage(err))).Error(), err: err})
}
