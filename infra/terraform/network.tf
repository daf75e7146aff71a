# The VPC (or an existing one): private subnets in two AZs for the cluster, nodes, pods, the inference Lambda and the
# endpoints; public subnets for a NAT gateway or an internet-facing load balancer (no nodes); no default route from
# the private subnets unless enable_nat_gateway; rejected flows logged.
resource "aws_vpc" "vpc" {
  count                = local.create_vpc ? 1 : 0
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true # interface endpoints answer on the services' own names (private DNS)
  enable_dns_hostnames = true
  tags                 = { Name = local.name }
}

# Terraform only: the VPC's default security group, which CloudFormation cannot manage, admits nothing.
resource "aws_default_security_group" "default" {
  count  = local.create_vpc ? 1 : 0
  vpc_id = aws_vpc.vpc[0].id
}

resource "aws_cloudwatch_log_group" "vpc_flow_log_group" {
  #checkov:skip=CKV_AWS_338:Retention is the environment's choice (log_retention_days, a year in prod as in samconfig.toml); rejected flows older than that serve no investigation here
  count             = local.create_vpc ? 1 : 0
  name              = "/radstream/${var.environment_name}/vpc-flow-logs"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.platform_key.arn
}

resource "aws_iam_role" "vpc_flow_log_role" {
  count = local.create_vpc ? 1 : 0
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "vpc-flow-logs.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = { StringEquals = { "aws:SourceAccount" = local.account } }
    }]
  })
}

resource "aws_iam_role_policy" "vpc_flow_log_role" {
  count = local.create_vpc ? 1 : 0
  name  = "write-flow-logs"
  role  = aws_iam_role.vpc_flow_log_role[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid      = "WriteTheFlowLogGroup"
      Effect   = "Allow"
      Action   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
      Resource = aws_cloudwatch_log_group.vpc_flow_log_group[0].arn
    }]
  })
}

resource "aws_flow_log" "vpc_flow_log" {
  count                = local.create_vpc ? 1 : 0
  vpc_id               = aws_vpc.vpc[0].id
  traffic_type         = "REJECT" # rejected flows are the signal; ACCEPT of every pull and query would cost more than it tells
  log_destination_type = "cloud-watch-logs"
  log_destination      = aws_cloudwatch_log_group.vpc_flow_log_group[0].arn
  iam_role_arn         = aws_iam_role.vpc_flow_log_role[0].arn
}

resource "aws_internet_gateway" "internet_gateway" {
  count  = local.create_vpc ? 1 : 0
  vpc_id = aws_vpc.vpc[0].id # the attachment (InternetGatewayAttachment in CloudFormation)
}

resource "aws_subnet" "public_subnet_a" {
  count                   = local.create_vpc ? 1 : 0
  vpc_id                  = aws_vpc.vpc[0].id
  availability_zone       = data.aws_availability_zones.available.names[0]
  cidr_block              = cidrsubnet(var.vpc_cidr, 4, 2)
  map_public_ip_on_launch = false
  tags                    = { Name = "${local.name}-public-a", "kubernetes.io/role/elb" = "1" }
}

resource "aws_subnet" "public_subnet_b" {
  count                   = local.create_vpc ? 1 : 0
  vpc_id                  = aws_vpc.vpc[0].id
  availability_zone       = data.aws_availability_zones.available.names[1]
  cidr_block              = cidrsubnet(var.vpc_cidr, 4, 3)
  map_public_ip_on_launch = false
  tags                    = { Name = "${local.name}-public-b", "kubernetes.io/role/elb" = "1" }
}

resource "aws_subnet" "private_subnet_a" {
  count             = local.create_vpc ? 1 : 0
  vpc_id            = aws_vpc.vpc[0].id
  availability_zone = data.aws_availability_zones.available.names[0]
  cidr_block        = cidrsubnet(var.vpc_cidr, 4, 0)
  tags              = { Name = "${local.name}-private-a", "kubernetes.io/role/internal-elb" = "1" }
}

resource "aws_subnet" "private_subnet_b" {
  count             = local.create_vpc ? 1 : 0
  vpc_id            = aws_vpc.vpc[0].id
  availability_zone = data.aws_availability_zones.available.names[1]
  cidr_block        = cidrsubnet(var.vpc_cidr, 4, 1)
  tags              = { Name = "${local.name}-private-b", "kubernetes.io/role/internal-elb" = "1" }
}

resource "aws_route_table" "public_route_table" {
  count  = local.create_vpc ? 1 : 0
  vpc_id = aws_vpc.vpc[0].id
}

resource "aws_route" "public_default_route" {
  count                  = local.create_vpc ? 1 : 0
  route_table_id         = aws_route_table.public_route_table[0].id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.internet_gateway[0].id
}

resource "aws_route_table_association" "public_subnet_a_route_table" {
  count          = local.create_vpc ? 1 : 0
  subnet_id      = aws_subnet.public_subnet_a[0].id
  route_table_id = aws_route_table.public_route_table[0].id
}

resource "aws_route_table_association" "public_subnet_b_route_table" {
  count          = local.create_vpc ? 1 : 0
  subnet_id      = aws_subnet.public_subnet_b[0].id
  route_table_id = aws_route_table.public_route_table[0].id
}

resource "aws_route_table" "private_route_table" {
  count  = local.create_vpc ? 1 : 0
  vpc_id = aws_vpc.vpc[0].id
}

resource "aws_route_table_association" "private_subnet_a_route_table" {
  count          = local.create_vpc ? 1 : 0
  subnet_id      = aws_subnet.private_subnet_a[0].id
  route_table_id = aws_route_table.private_route_table[0].id
}

resource "aws_route_table_association" "private_subnet_b_route_table" {
  count          = local.create_vpc ? 1 : 0
  subnet_id      = aws_subnet.private_subnet_b[0].id
  route_table_id = aws_route_table.private_route_table[0].id
}

resource "aws_eip" "nat_address" {
  count      = local.create_nat ? 1 : 0
  domain     = "vpc"
  depends_on = [aws_internet_gateway.internet_gateway]
}

resource "aws_nat_gateway" "nat_gateway" {
  count         = local.create_nat ? 1 : 0
  allocation_id = aws_eip.nat_address[0].id
  subnet_id     = aws_subnet.public_subnet_a[0].id
}

resource "aws_route" "private_default_route" {
  count                  = local.create_nat ? 1 : 0
  route_table_id         = aws_route_table.private_route_table[0].id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.nat_gateway[0].id
}

resource "aws_kms_key" "platform_key" {
  description             = "RadStream ${var.environment_name} platform key (EKS secrets, control-plane and flow logs)"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdministersTheKey"
        Effect    = "Allow"
        Principal = { AWS = "arn:${local.partition}:iam::${local.account}:root" }
        Action    = "kms:*"
        Resource  = "*" # in a key policy "*" means this key
      },
      {
        Sid       = "CloudWatchLogsEncryptsThisAccountsLogGroups"
        Effect    = "Allow"
        Principal = { Service = "logs.${local.region}.amazonaws.com" }
        Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*" # in a key policy "*" means this key
        Condition = { ArnLike = { "kms:EncryptionContext:aws:logs:arn" = "arn:${local.partition}:logs:${local.region}:${local.account}:log-group:*" } }
      },
    ]
  })
}

resource "aws_kms_alias" "platform_key_alias" {
  name          = "alias/${local.name}-platform"
  target_key_id = aws_kms_key.platform_key.key_id
}
