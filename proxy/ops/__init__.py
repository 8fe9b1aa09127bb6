"""Operations: health checks, hot reload, metrics, status, logs and failure fixtures."""
