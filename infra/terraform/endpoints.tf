# VPC endpoints: what the workloads need without a NAT, each policy limited to RadStream's resources (the same
# statements as infra/platform.yaml), and the ECR pull-through caches for public images.
locals {
  account_principals = { StringEquals = { "aws:PrincipalAccount" = local.account } }
  ecr_pull = [{
    Sid       = "PullImagesAsThisAccount"
    Effect    = "Allow"
    Principal = "*"
    Action = ["ecr:GetAuthorizationToken", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability",
    "ecr:BatchImportUpstreamImage", "ecr:CreateRepository"]
    Resource  = "*" # images come from this account's repositories and AWS's add-on registries; GetAuthorizationToken has no resource
    Condition = local.account_principals
  }]
  # Interface endpoints with private DNS, by service: their policy statements.
  interface_endpoints = {
    "kinesis-streams" = [{
      Sid       = "TheTelemetryStream"
      Effect    = "Allow"
      Principal = "*"
      Action    = ["kinesis:PutRecord", "kinesis:PutRecords", "kinesis:DescribeStreamSummary", "kinesis:ListShards"]
      Resource  = "arn:${local.partition}:kinesis:${local.region}:${local.account}:stream/radstream-telemetry-${var.environment_name}"
    }]
    glue = [{
      Sid       = "TheTelemetryCatalog"
      Effect    = "Allow"
      Principal = "*"
      Action    = ["glue:GetDatabase", "glue:GetTable", "glue:GetTables", "glue:GetPartition", "glue:GetPartitions"]
      Resource = [
        "arn:${local.partition}:glue:${local.region}:${local.account}:catalog",
        "arn:${local.partition}:glue:${local.region}:${local.account}:database/radstream_${var.environment_name}",
        "arn:${local.partition}:glue:${local.region}:${local.account}:table/radstream_${var.environment_name}/*",
      ]
    }]
    athena = [{
      Sid       = "TheRadStreamWorkgroup"
      Effect    = "Allow"
      Principal = "*"
      Action = ["athena:StartQueryExecution", "athena:GetQueryExecution", "athena:GetQueryResults", "athena:StopQueryExecution",
      "athena:GetWorkGroup", "athena:GetNamedQuery", "athena:ListNamedQueries", "athena:BatchGetNamedQuery"]
      Resource = "arn:${local.partition}:athena:${local.region}:${local.account}:workgroup/radstream-${var.environment_name}"
    }]
    # "Critical Finding" events from the notify function (in the VPC to reach the RIS), as infra/platform.yaml's EventsEndpoint.
    events = [{
      Sid       = "TheDefaultBusOfThisAccount"
      Effect    = "Allow"
      Principal = "*"
      Action    = "events:PutEvents"
      Resource  = "arn:${local.partition}:events:${local.region}:${local.account}:event-bus/default"
    }]
    sts = [
      {
        Sid       = "AssumeThisAccountsRoles"
        Effect    = "Allow"
        Principal = "*"
        Action    = ["sts:AssumeRoleWithWebIdentity", "sts:AssumeRole", "sts:TagSession"]
        Resource  = "arn:${local.partition}:iam::${local.account}:role/*"
      },
      {
        Sid       = "WhoAmIForThisAccount"
        Effect    = "Allow"
        Principal = "*"
        Action    = "sts:GetCallerIdentity"
        Resource  = "*" # GetCallerIdentity names no resource; the condition keeps it to this account's principals
        Condition = local.account_principals
      },
    ]
    secretsmanager = [{
      Sid       = "RadStreamSecretsOnly"
      Effect    = "Allow"
      Principal = "*"
      Action    = "secretsmanager:GetSecretValue"
      Resource  = "arn:${local.partition}:secretsmanager:${local.region}:${local.account}:secret:radstream/${var.environment_name}/*"
    }]
    logs = [{
      Sid       = "ThisAccountsLogGroups"
      Effect    = "Allow"
      Principal = "*"
      Action    = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogGroups", "logs:DescribeLogStreams"]
      Resource  = "arn:${local.partition}:logs:${local.region}:${local.account}:log-group:*"
    }]
    "ecr.api" = local.ecr_pull
    "ecr.dkr" = local.ecr_pull
    ec2 = [{
      Sid       = "ThisAccountsPrincipals"
      Effect    = "Allow"
      Principal = "*"
      Action    = "ec2:*"
      Resource  = "*" # dozens of ec2 calls of the CNI / load balancer controller, bounded by their IAM roles; the endpoint keeps other accounts out
      Condition = local.account_principals
    }]
    elasticloadbalancing = [{
      Sid       = "ThisAccountsPrincipals"
      Effect    = "Allow"
      Principal = "*"
      Action    = "elasticloadbalancing:*"
      Resource  = "*" # dozens of elasticloadbalancing calls of the load balancer controller, bounded by its IAM role; the endpoint keeps other accounts out
      Condition = local.account_principals
    }]
  }
  radstream_buckets = flatten([for b in ["images", "results", "telemetry", "artifacts"] : [
    "arn:${local.partition}:s3:::radstream-${b}-${local.account}",
    "arn:${local.partition}:s3:::radstream-${b}-${local.account}/*",
  ]])
}

resource "aws_security_group" "endpoint_security_group" {
  name_prefix = "${local.name}-endpoints-"
  description = "RadStream interface endpoints - HTTPS from inside the VPC only"
  vpc_id      = local.vpc_id
  ingress {
    description = "HTTPS from the VPC (nodes, pods, the inference Lambda)"
    protocol    = "tcp"
    from_port   = 443
    to_port     = 443
    cidr_blocks = [local.vpc_cidr]
  }
  egress {
    description = "Nothing leaves an endpoint's interface on its own"
    protocol    = "-1"
    from_port   = 0
    to_port     = 0
    cidr_blocks = ["127.0.0.1/32"]
  }
}

# S3 (gateway, no hourly charge): the four RadStream buckets, and the bucket ECR serves image layers from.
resource "aws_vpc_endpoint" "s3_endpoint" {
  vpc_id            = local.vpc_id
  service_name      = "com.amazonaws.${local.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = local.private_route_ids
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "RadStreamBuckets"
        Effect    = "Allow"
        Principal = "*"
        Action    = ["s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:GetBucketLocation", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
        Resource  = local.radstream_buckets
      },
      {
        Sid       = "EcrImageLayers"
        Effect    = "Allow"
        Principal = "*"
        Action    = "s3:GetObject"
        Resource  = "arn:${local.partition}:s3:::prod-${local.region}-starport-layer-bucket/*"
      },
    ]
  })
}

resource "aws_vpc_endpoint" "interface" {
  for_each            = local.interface_endpoints
  vpc_id              = local.vpc_id
  service_name        = "com.amazonaws.${local.region}.${each.key}"
  vpc_endpoint_type   = "Interface"
  private_dns_enabled = true
  subnet_ids          = local.private_subnet_ids
  security_group_ids  = [aws_security_group.endpoint_security_group.id]
  policy              = jsonencode({ Version = "2012-10-17", Statement = each.value })
}

# The gateway pods' S3: an interface endpoint without private DNS (S3's names keep resolving to the gateway endpoint),
# admitting only PutObject of incoming instances.
resource "aws_vpc_endpoint" "gateway_s3_endpoint" {
  vpc_id              = local.vpc_id
  service_name        = "com.amazonaws.${local.region}.s3"
  vpc_endpoint_type   = "Interface"
  private_dns_enabled = false
  subnet_ids          = local.private_subnet_ids
  security_group_ids  = [aws_security_group.endpoint_security_group.id]
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "IncomingInstancesOnly"
      Effect    = "Allow"
      Principal = "*"
      Action    = ["s3:PutObject", "s3:GetObject"]
      Resource  = "arn:${local.partition}:s3:::radstream-images-${local.account}/incoming/*"
      }, {
      Sid       = "TheResultsTheGatewayServes"
      Effect    = "Allow"
      Principal = "*"
      Action    = ["s3:ListBucket", "s3:GetObject"]
      Resource = [
        "arn:${local.partition}:s3:::radstream-results-${local.account}",
        "arn:${local.partition}:s3:::radstream-results-${local.account}/results/*/report.sr.dcm",
        "arn:${local.partition}:s3:::radstream-results-${local.account}/results/*/report.overlay.dcm",
      ]
    }]
  })
}

resource "aws_ecr_pull_through_cache_rule" "ecr_public_pull_through" {
  ecr_repository_prefix = "${local.name}-ecr-public"
  upstream_registry_url = "public.ecr.aws"
}

resource "aws_ecr_pull_through_cache_rule" "quay_pull_through" {
  ecr_repository_prefix = "${local.name}-quay"
  upstream_registry_url = "quay.io"
}

resource "aws_ecr_pull_through_cache_rule" "kubernetes_registry_pull_through" {
  ecr_repository_prefix = "${local.name}-k8s"
  upstream_registry_url = "registry.k8s.io"
}
