//! AWS SDK configuration, loaded once per cold start. `AWS_ENDPOINT_URL` (honoured by the
//! SDK itself) points every client at a local AWS such as moto.

use aws_config::environment::credentials::EnvironmentVariableCredentialsProvider;

/// Loads the shared SDK configuration from the environment.
///
/// Lambda hands a function its role's credentials in `AWS_ACCESS_KEY_ID` /
/// `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, the first source the default chain
/// tries. When they are set they are used directly: building the whole default chain
/// costs a measurable part of cold init (it builds an STS client, with its own HTTP
/// client and CA bundle, for web-identity credentials that are never used). Elsewhere
/// (a developer's profile, SSO, IMDS) the default chain is used as before.
pub async fn load() -> aws_config::SdkConfig {
    let loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    let loader = if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
        loader.credentials_provider(EnvironmentVariableCredentialsProvider::new())
    } else {
        loader
    };
    loader.load().await
}
