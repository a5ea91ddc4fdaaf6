package lab

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The real kubeadm binary (built with the other lab binaries) runs, on behalf of a
// control VM, the kubeadm commands that need no kubelet: `kubeadm token ...` and
// `kubeadm init phase upload-certs`. It talks to the lab's API server with the lab's
// admin kubeconfig (a control node's /etc/kubernetes/admin.conf) and reads the lab's
// PKI laid out as kubeadm's /etc/kubernetes/pki.

// KubeadmRun is one kubeadm command line of a control VM.
type KubeadmRun struct {
	// Node and Address are the VM's hostname and address (the InitConfiguration's
	// nodeRegistration.name and localAPIEndpoint.advertiseAddress).
	Node, Address string
	// Args are the command's arguments after "kubeadm".
	Args []string
	// Stdout and Stderr receive kubeadm's own output.
	Stdout, Stderr io.Writer
}

// Kubeadm runs the lab's kubeadm binary with r.Args plus what a control node provides
// implicitly: --kubeconfig (the lab's admin kubeconfig) for every command, and for
// `init phase upload-certs` a --config whose ClusterConfiguration is the cluster's
// kubeadm-config ConfigMap's with certificatesDir pointing at KubeadmPKI. It returns
// kubeadm's exit code; an error only when kubeadm could not be run.
func (cp *ControlPlane) Kubeadm(ctx context.Context, r KubeadmRun) (int, error) {
	bin := filepath.Join(cp.BinDir, "kubeadm")
	if _, err := os.Stat(bin); err != nil {
		return 0, fmt.Errorf("kubeadm binary missing in %s: run `make lab-bins`", cp.BinDir)
	}
	args := append([]string(nil), r.Args...)
	if len(args) >= 3 && args[0] == "init" && args[1] == "phase" && args[2] == "upload-certs" {
		cfg, err := cp.kubeadmInitConfig(ctx, r.Node, r.Address)
		if err != nil {
			return 0, err
		}
		defer os.Remove(cfg)
		args = append(args, "--config", cfg)
	}
	// A flag given twice takes its last value: the lab's admin kubeconfig wins over a
	// node path such as /etc/kubernetes/admin.conf.
	args = append(args, "--kubeconfig", cp.Kubeconfig)
	cmd := command(ctx, bin, args...)
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "KUBECONFIG=") {
			env = append(env, e)
		}
	}
	cmd.Env = env
	cmd.Dir = cp.Dir
	cmd.Stdout, cmd.Stderr = r.Stdout, r.Stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() >= 0 {
		return exit.ExitCode(), nil
	}
	if err != nil {
		return 0, fmt.Errorf("run kubeadm %s: %w", strings.Join(r.Args[:min(len(r.Args), 3)], " "), err)
	}
	return 0, nil
}

var certificatesDirRE = regexp.MustCompile(`(?m)^certificatesDir:.*$`)

// kubeadmInitConfig writes the InitConfiguration and ClusterConfiguration kubeadm init
// phases read on a control node, and returns the file's path (the caller removes it).
func (cp *ControlPlane) kubeadmInitConfig(ctx context.Context, node, address string) (string, error) {
	pki, err := cp.KubeadmPKI()
	if err != nil {
		return "", err
	}
	cc := ""
	cm, err := cp.Client.CoreV1().ConfigMaps("kube-system").Get(ctx, kubeadmConfig, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		cc = clusterConfiguration(PinnedVersions().Kubernetes)
	case err != nil:
		return "", fmt.Errorf("read the kubeadm-config ConfigMap: %w", err)
	default:
		cc = cm.Data["ClusterConfiguration"]
	}
	dir := "certificatesDir: " + pki
	if certificatesDirRE.MatchString(cc) {
		cc = certificatesDirRE.ReplaceAllLiteralString(cc, dir)
	} else {
		cc = strings.TrimRight(cc, "\n") + "\n" + dir + "\n"
	}
	// The VMs listen on loopback addresses (127.x.y.z), which kubeadm takes as a request
	// to pick an address of the host's loopback interface; a control node's address on
	// a cloud network is private: 10.x.y.z stands for it (upload-certs does not use it).
	if ip := net.ParseIP(address).To4(); ip == nil {
		address = "10.0.0.1"
	} else if ip.IsLoopback() {
		address = fmt.Sprintf("10.%d.%d.%d", ip[1], ip[2], ip[3])
	}
	init := fmt.Sprintf(`apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: %s
  bindPort: 6443
nodeRegistration:
  criSocket: unix:///var/run/containerd/containerd.sock
  name: %s
---
`, address, node)
	f, err := os.CreateTemp(filepath.Join(cp.Dir), "kubeadm-init-*.yaml")
	if err != nil {
		return "", fmt.Errorf("kubeadm configuration: %w", err)
	}
	_, err = f.WriteString(init + cc)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("kubeadm configuration: %w", err)
	}
	return f.Name(), nil
}

// KubeadmPKI returns the directory holding the cluster's shared certificates and keys as
// kubeadm lays out /etc/kubernetes/pki on a control node: ca.crt/ca.key (the CA the lab's
// API server trusts, kwokctl's), sa.key/sa.pub (the key pair it signs service account
// tokens with), front-proxy-ca.crt/key and etcd/ca.crt/key (generated once per lab: its
// API server uses no front proxy and its etcd no TLS). Created on first use.
func (cp *ControlPlane) KubeadmPKI() (string, error) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	dir := filepath.Join(cp.Dir, "kubeadm-pki")
	if _, err := os.Stat(filepath.Join(dir, "etcd", "ca.key")); err == nil {
		return dir, nil
	}
	if err := cp.writeKubeadmPKI(dir); err != nil {
		return "", fmt.Errorf("kubeadm PKI in %s: %w", dir, err)
	}
	return dir, nil
}

func (cp *ControlPlane) writeKubeadmPKI(dir string) error {
	src := filepath.Join(cp.workDir, "clusters", cp.Name, "pki")
	if err := os.MkdirAll(filepath.Join(dir, "etcd"), 0o700); err != nil {
		return err
	}
	copyFile := func(from, to string, mode os.FileMode) error {
		b, err := os.ReadFile(filepath.Join(src, from))
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, to), b, mode)
	}
	if err := copyFile("ca.crt", "ca.crt", 0o644); err != nil {
		return err
	}
	if err := copyFile("ca.key", "ca.key", 0o600); err != nil {
		return err
	}
	if err := copyFile("admin.key", "sa.key", 0o600); err != nil {
		return err
	}
	saKey, err := os.ReadFile(filepath.Join(src, "admin.key"))
	if err != nil {
		return err
	}
	pub, err := publicKeyPEM(saKey)
	if err != nil {
		return fmt.Errorf("service account key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sa.pub"), pub, 0o644); err != nil {
		return err
	}
	// The etcd CA's key is written last: KubeadmPKI takes it as the sign of a whole dir.
	for _, ca := range []struct{ name, cn string }{{"front-proxy-ca", "front-proxy-ca"}, {filepath.Join("etcd", "ca"), "etcd-ca"}} {
		cert, key, err := newCA(ca.cn)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, ca.name+".crt"), cert, 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, ca.name+".key"), key, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// publicKeyPEM is the PKIX public key, PEM encoded, of a PEM private key (PKCS#1, PKCS#8
// or SEC 1), as kubeadm writes sa.pub.
func publicKeyPEM(keyPEM []byte) ([]byte, error) {
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var key any
	var err error
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("a %T is no signing key", key)
	}
	der, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// newCA is a self-signed CA certificate valid ten years, as kubeadm makes its CAs, and
// its key (PEM).
func newCA(cn string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
}

// kubeadmCerts are the entries of the kubeadm-certs Secret a control-plane join needs
// (stacked etcd): kubeadm's file names with "/" made "-".
var kubeadmCerts = []string{"ca.crt", "ca.key", "front-proxy-ca.crt", "front-proxy-ca.key", "sa.pub", "sa.key", "etcd-ca.crt", "etcd-ca.key"}

const kubeadmCertsGone = "error downloading the secret: Secret \"kubeadm-certs\" was not found in the \"kube-system\" Namespace. " +
	"This Secret might have expired. Please, run `kubeadm init phase upload-certs --upload-certs` on a control plane to generate a new one"

// DownloadCerts is what `kubeadm join --control-plane --certificate-key KEY`'s
// download-certs phase does with the kubeadm-certs Secret kubeadm upload-certs wrote:
// each entry is AES-GCM sealed with the hex-decoded key (the nonce first), and must open.
// The Secret counts as gone once the bootstrap token owning it is (deleted, or expired at
// now: the token cleaner deletes it, and the garbage collector the Secret). The error is
// kubeadm's, without the key.
func (cp *ControlPlane) DownloadCerts(ctx context.Context, key string, now time.Time) error {
	raw, err := hex.DecodeString(key)
	if err != nil {
		return fmt.Errorf("error decoding certificate key: %v", err)
	}
	sec, err := cp.Client.CoreV1().Secrets("kube-system").Get(ctx, "kubeadm-certs", metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return errors.New(kubeadmCertsGone)
	}
	if err != nil {
		return fmt.Errorf("error downloading the secret: %w", err)
	}
	owned := false
	for _, o := range sec.OwnerReferences {
		if o.Kind != "Secret" || !strings.HasPrefix(o.Name, "bootstrap-token-") {
			continue
		}
		tok, err := cp.Client.CoreV1().Secrets("kube-system").Get(ctx, o.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) || (err == nil && tok.UID != o.UID) {
			return errors.New(kubeadmCertsGone)
		}
		if err != nil {
			return fmt.Errorf("error downloading the secret: %w", err)
		}
		if exp, err := time.Parse(time.RFC3339, string(tok.Data["expiration"])); err == nil && !now.Before(exp) {
			return errors.New(kubeadmCertsGone)
		}
		owned = true
	}
	if !owned {
		return errors.New(kubeadmCertsGone)
	}
	block, err := aes.NewCipher(raw)
	if err != nil {
		return fmt.Errorf("error decoding secret data with provided key: %v", err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return fmt.Errorf("error decoding secret data with provided key: %v", err)
	}
	for _, sealed := range sec.Data {
		if len(sealed) == 0 {
			continue
		}
		if len(sealed) < gcm.NonceSize() {
			return errors.New("error decoding secret data with provided key: size of data is less than the nonce")
		}
		if _, err := gcm.Open(nil, sealed[:gcm.NonceSize()], sealed[gcm.NonceSize():], nil); err != nil {
			return fmt.Errorf("error decoding secret data with provided key: %v", err)
		}
	}
	for _, name := range kubeadmCerts {
		if len(sec.Data[name]) == 0 {
			return fmt.Errorf("the Secret does not include the required certificate or key - name: %s, path: /etc/kubernetes/pki/%s", strings.Replace(name, "etcd-", "etcd/", 1), strings.Replace(name, "etcd-", "etcd/", 1))
		}
	}
	return nil
}
