package ipvs

import (
	"testing"

	"github.com/spoke-proxy/spoke/internal/testnet"
)

func TestMain(m *testing.M) {
	testnet.Main(m)
}
