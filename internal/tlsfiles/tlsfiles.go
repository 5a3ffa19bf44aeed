// Package tlsfiles builds gRPC transport credentials from PEM files that are
// read again while the process runs, so that a renewed certificate or CA
// bundle (a rotated Secret, cert-manager) takes effect on new connections
// without a restart; connections already open keep their session.
//
// The files are watched with gRPC's own pemfile certificate provider and
// the handshakes are done by gRPC's advancedtls, which takes the identity
// and the roots from those providers on every handshake. A server given a
// client CA requires and verifies client certificates (mutual TLS); a
// client given a certificate and key presents them.
//
// Caveats: a change is seen at the next check of the files (Refresh), not
// at once. A file that becomes unreadable or invalid leaves the last good
// material in use; the error is only logged by the provider.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/tls/certprovider"
	"google.golang.org/grpc/credentials/tls/certprovider/pemfile"
	"google.golang.org/grpc/security/advancedtls"
)

// DefaultRefresh is how often the files are checked when Files.Refresh is
// zero: about as often as the kubelet refreshes a mounted Secret.
const DefaultRefresh = time.Minute

// Files names the PEM files of one side of a connection.
type Files struct {
	// Cert and Key are this side's certificate chain and key: required for
	// a server, optional for a client (mutual TLS).
	Cert, Key string
	// CA is the bundle that verifies the other side: required for a
	// client; for a server, optional, and when set clients must present a
	// certificate it signed.
	CA string
	// Refresh is how often the files are read again; DefaultRefresh when
	// zero.
	Refresh time.Duration
}

// Credentials are transport credentials whose files are watched until
// Close.
type Credentials struct {
	credentials.TransportCredentials
	providers []certprovider.Provider
}

// Close stops watching the files.
func (c *Credentials) Close() {
	for _, p := range c.providers {
		p.Close()
	}
}

// Server returns server credentials from f.
func Server(f Files) (*Credentials, error) {
	if f.Cert == "" || f.Key == "" {
		return nil, errors.New("a server needs a certificate and a key")
	}
	c := &Credentials{}
	identity, err := c.identity(f)
	if err != nil {
		return nil, err
	}
	opts := &advancedtls.Options{
		IdentityOptions: advancedtls.IdentityCertificateOptions{IdentityProvider: identity},
	}
	if f.CA != "" {
		roots, err := c.roots(f)
		if err != nil {
			c.Close()
			return nil, err
		}
		opts.RootOptions = advancedtls.RootCertificateOptions{RootProvider: roots}
		opts.RequireClientCert = true
		// A client certificate proves a key signed by the CA; there is no
		// host name to check.
		opts.VerificationType = advancedtls.CertVerification
	}
	if c.TransportCredentials, err = advancedtls.NewServerCreds(opts); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Client returns client credentials from f: the server's certificate is
// verified against f.CA and the address dialled.
func Client(f Files) (*Credentials, error) {
	if f.CA == "" {
		return nil, errors.New("a client needs a CA bundle to verify the server")
	}
	if (f.Cert == "") != (f.Key == "") {
		return nil, errors.New("a client certificate needs both its certificate and its key")
	}
	c := &Credentials{}
	roots, err := c.roots(f)
	if err != nil {
		return nil, err
	}
	opts := &advancedtls.Options{
		RootOptions:      advancedtls.RootCertificateOptions{RootProvider: roots},
		VerificationType: advancedtls.CertAndHostVerification,
	}
	if f.Cert != "" {
		identity, err := c.identity(f)
		if err != nil {
			c.Close()
			return nil, err
		}
		opts.IdentityOptions = advancedtls.IdentityCertificateOptions{IdentityProvider: identity}
	}
	if c.TransportCredentials, err = advancedtls.NewClientCreds(opts); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// identity checks the certificate and key once, so that a bad file is an
// error at start, then watches them.
func (c *Credentials) identity(f Files) (certprovider.Provider, error) {
	if _, err := tls.LoadX509KeyPair(f.Cert, f.Key); err != nil {
		return nil, fmt.Errorf("loading the certificate %s and key %s: %w", f.Cert, f.Key, err)
	}
	p, err := pemfile.NewProvider(pemfile.Options{CertFile: f.Cert, KeyFile: f.Key, RefreshDuration: refresh(f)})
	if err != nil {
		return nil, err
	}
	c.providers = append(c.providers, p)
	return p, nil
}

// roots checks the CA bundle once, then watches it.
func (c *Credentials) roots(f Files) (certprovider.Provider, error) {
	b, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("reading the CA bundle: %w", err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("the CA bundle %s holds no PEM certificate", f.CA)
	}
	p, err := pemfile.NewProvider(pemfile.Options{RootFile: f.CA, RefreshDuration: refresh(f)})
	if err != nil {
		return nil, err
	}
	c.providers = append(c.providers, p)
	return p, nil
}

func refresh(f Files) time.Duration {
	if f.Refresh > 0 {
		return f.Refresh
	}
	return DefaultRefresh
}
