//! AWS SDK configuration, loaded once per cold start. `AWS_ENDPOINT_URL` (honoured by the
//! SDK itself) points every client at a local AWS such as moto.

/// Loads the shared SDK configuration from the environment.
pub async fn load() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}
